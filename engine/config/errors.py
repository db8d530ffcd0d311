"""The config layer's error: one line naming the key, what is wrong and the fix."""


class ConfigError(ValueError):
    """An invalid config, as one line: `<key path>: <what is wrong>; <the fix>`."""
