"""Exceptions of the gallery store, so callers can tell a wrong gallery from a broken one."""

from __future__ import annotations


class GalleryError(Exception):
    """Base class of every gallery problem the user can act on."""


class GalleryMismatchError(GalleryError, ValueError):
    """The gallery was built with another embedding model, feature dimension or metric."""


class GalleryCorruptError(GalleryError, ValueError):
    """The folder is not a gallery, or its database is damaged."""


class GallerySchemaError(GalleryError, ValueError):
    """The gallery was written by a newer version of this package than the one running."""


class GalleryLockedError(GalleryError, RuntimeError):
    """Another process holds the gallery open for writing."""
