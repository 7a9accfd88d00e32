"""Exceptions raised for bad user input.

Every message names the file involved (when there is one) and the problem, in one sentence,
so the CLI can print it as a one-line reason and the GUI can show it as a notification.
"""

from __future__ import annotations


class DGCError(ValueError):
    """Base class of all errors caused by user input or user files."""


class UnsupportedFormatError(DGCError):
    """The file is not of a format napari-dgc reads (the napari reader declines it)."""


class CubeFormatError(DGCError):
    """A file of a supported format is broken, inconsistent or holds no usable cube."""


class CheckpointError(DGCError):
    """A run folder or checkpoint is missing, corrupt or incompatible."""


class ConfigError(DGCError):
    """A training or segmentation setting is out of its valid range."""


class MaskError(DGCError):
    """A ground-truth mask does not match its cube or holds unknown values."""


class MappingError(DGCError):
    """A cluster-to-class mapping is inconsistent with the model it is applied to."""
