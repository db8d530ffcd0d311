from engine.config.schema import dump_toml  # noqa: F401
