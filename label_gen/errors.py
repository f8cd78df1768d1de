"""Errors of the pseudo-label generator (all one-line CSADError subclasses)."""

from csad_jax.errors import ConfigError, WeightsError


class MissingPackageError(ConfigError):
    """An optional package (groundingdino-py, recognize-anything) is not installed."""


class MissingFileError(WeightsError):
    """A checkpoint, model config or text-encoder folder given by path is missing."""
