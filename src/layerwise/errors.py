"""User-facing errors: each message names the problem and the fix; main.py prints it without a traceback."""


class LayerwiseError(Exception):
    """A mistake in the user's input or environment (not a bug in layerwise)."""


class ConfigError(LayerwiseError):
    """An invalid or inconsistent configuration."""


class DataError(LayerwiseError):
    """A dataset that cannot be found, downloaded or read."""


class ResourceError(LayerwiseError):
    """A setting that needs more memory (or another resource) than the machine has."""
