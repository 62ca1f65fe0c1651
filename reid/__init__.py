"""reid: person re-identification with generalizing deep metric learning.

The public entry point for features of anyone's images is :class:`reid.FeatureExtractor` (imported on first
use, so ``import reid`` stays light)."""

__version__ = "0.1.0"
__all__ = ["FeatureExtractor"]


def __getattr__(name: str):
    if name == "FeatureExtractor":
        from reid.extraction import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
