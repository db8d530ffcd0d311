"""The config layer: the TOML schema with units, its cross-checks and one-line errors, and the
build of a `Model` from a config (with the map from config keys to model leaves)."""
