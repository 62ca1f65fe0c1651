"""reid: person re-identification with generalizing deep metric learning."""

__version__ = "0.1.0"
