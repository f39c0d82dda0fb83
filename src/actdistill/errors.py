"""The package's user-facing error type, at the bottom of the layers so that every module can raise it."""


class ConfigError(ValueError):
    """A config value or an input is wrong; the message is one sentence that names the field or the file."""
