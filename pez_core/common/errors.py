"""Exceptions a user can act on. All derive from ``ValueError`` so callers may catch either."""


class PezError(ValueError):
    """Bad input or configuration; the message says what to change."""


class ModelLoadError(PezError):
    """A model could not be built or its weights could not be read."""


class WeightsNotAvailableError(ModelLoadError):
    """Weights are not on this machine and may not be downloaded (offline)."""
