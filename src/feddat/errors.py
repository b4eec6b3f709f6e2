"""Errors that several layers raise, in a leaf that imports nothing (not even torch), so that the
light Flower ClientApp can load the config without loading torch."""


class ConfigError(ValueError):
    """A configuration value or key the user gave is wrong."""
