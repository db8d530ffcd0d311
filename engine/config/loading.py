from engine.config.schema import load_config, parse_override, set_path, split_path, to_raw  # noqa: F401
