"""Model parameters named by config keys: the bridge from `--vary`, sweeps, gradients and fits
to the traced leaves of the model.

A key (`species.IL2.diffusion`, `terms[0].rate`, `terms[4].activators[0].K`, `sources[0].rate`)
names a number of the config, in engine units (um, s, nM, cells/um^3, molecules). Every leaf of
the model depends on such a number affinely (a diffusion coefficient is the number itself, a
region source's per-voxel rate is the number times the region's mask, the explicit reaction
bound is a sum of growth rates), so `Parameters` finds, by building the model at the config's
value and at two others, the base leaves and the slope of each leaf the key moves. Binding a
value (a traced one included) is then a sum that `vmap` and `grad` see through, with no
recompilation and no knowledge here of how each term stores its numbers.

Cell types ([cells]) add leaves after every other leaf of the model (their start positions,
rates and initial state values), so the leaves of the other keys keep their indices. Their
rates, coefficients and initial state values are parameters like any other
(`cells.Th.secretion[0].rate`, `cells.Th.state.R`); what counts or places cells (`count`,
`capacity`, `place`) and `time.seed` (which draws the start positions) are not: the model
changes with them in steps, or in shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from engine.config.build import build_model
from engine.config.errors import ConfigError
from engine.config.loading import load_config, split_path
from engine.config.schema import Config
from engine.config.toml import to_raw
from engine.model.model import Model

MODEL_SECTIONS = ("species", "populations", "terms", "sources", "cells")
"""Config tables whose numbers are model parameters."""

NOT_PARAMETERS = {"seed", "center", "position", "radius", "count", "place"}
"""Numbers of those tables that place or count things rather than set a rate: left out of
`numeric_keys` (the model depends on them in steps, not affinely)."""

CELL_NOT_PARAMETERS = ("count", "capacity", "place")
"""Keys of a [cells.NAME] table that count or place cells: never parameters."""

_AFFINE_RTOL = 1e-9


def _node(raw: dict, key: str):
    node = raw
    for token in split_path(key):
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"{key}: no such key in the config; check the path") from None
    return node


def config_number(cfg: Config, key: str, sections=MODEL_SECTIONS) -> tuple[str, float]:
    """The path of the number `key` names and its value (engine units): `key` itself, or
    `key.value` for a coefficient or an initial value (tables whose number is their `value`).
    Keys outside `sections` (time, grid, output) change nothing in the model, and the keys
    that count or place cells (`cells.NAME.count`, `capacity`, `place`, and `time.seed`) move
    it in steps: a ConfigError."""
    tokens = split_path(key)
    if tokens[:2] == ["time", "seed"]:
        raise ConfigError(
            f"{key}: draws the cells' start positions and random walks, not a rate; vary it "
            "with separate runs (--set time.seed=...) instead"
        )
    if tokens[0] not in sections:
        raise ConfigError(
            f"{key}: changes nothing in the model; name a number of {', '.join(sections)} "
            "(time, grid and output keys are not parameters of the model)"
        )
    node = _node(to_raw(cfg), key)
    if tokens[0] == "cells" and len(tokens) >= 3 and tokens[2] in CELL_NOT_PARAMETERS:
        raise ConfigError(
            f"{key}: counts or places cells, which changes the model in steps, not as a rate; "
            "vary it with separate runs (--set) instead"
        )
    if isinstance(node, dict) and _is_number(node.get("value")):
        return f"{key}.value", float(node["value"])
    if not _is_number(node):
        raise ConfigError(f"{key}: not a number in the config; name a numeric key")
    return key, float(node)


def config_value(cfg: Config, key: str) -> float:
    """The number (engine units) that `key` names in a resolved config."""
    return config_number(cfg, key)[1]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def display_key(key: str) -> str:
    """`species.IL2.diffusion.value` -> `species.IL2.diffusion` (how users name it)."""
    return key.removesuffix(".value")


def numeric_keys(cfg: Config) -> list[str]:
    """Every rate-like number of the model's tables (species, populations, terms, sources,
    cells), in config order, as display keys: the candidates of a sensitivity analysis."""
    keys: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name not in NOT_PARAMETERS:
                    walk(value, f"{path}.{name}" if path else name)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, float) and math.isfinite(node):
            keys.append(display_key(path))

    raw = to_raw(cfg)
    for section in MODEL_SECTIONS:
        walk(raw.get(section, {}), section)
    return keys


def model_leaves(cfg: Config) -> tuple[list[np.ndarray], object]:
    """The leaves (float64) and structure of the model a config builds."""
    leaves, treedef = jax.tree.flatten(build_model(cfg))
    return [np.asarray(leaf, dtype=np.float64) for leaf in leaves], treedef


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two model leaves differ (in shape or in any value)."""
    return a.shape != b.shape or not np.array_equal(a, b, equal_nan=True)


@dataclass(frozen=True, eq=False)
class Parameters:
    """Model parameters named by config keys (display form), with their values (engine units)
    in the config and, per parameter, the slope of every model leaf it moves.

    Build with `Parameters.of(cfg, keys)`."""

    keys: tuple[str, ...]
    values: np.ndarray  # (P,) float64, engine units
    slopes: tuple[dict[int, np.ndarray], ...]  # per parameter: leaf index -> d leaf / d value
    base: dict[int, np.ndarray]  # leaf index -> the config's leaf (float64), for moved leaves

    @classmethod
    def of(cls, cfg: Config, keys, skip_invalid: bool = False) -> Parameters:
        """The parameters `keys` of a config; a key that is not a number of the config, moves
        nothing in the model (time.end, output.*) or moves it non-affinely (region geometry)
        is a ConfigError naming it (left out instead with `skip_invalid`)."""
        keys = [display_key(k) for k in keys]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"parameters: {', '.join(keys)} names a key twice; name each once")
        base, treedef = model_leaves(cfg)
        kept, values, slopes = [], [], []
        for key in keys:
            try:
                path, value = config_number(cfg, key)
                slopes.append(_slopes(cfg, key, path, value, base, treedef))
            except ConfigError:
                if skip_invalid:
                    continue
                raise
            kept.append(key)
            values.append(value)
        moved = {i for s in slopes for i in s}
        base_leaves = {i: base[i] for i in sorted(moved)}
        return cls(tuple(kept), np.asarray(values, dtype=np.float64), tuple(slopes), base_leaves)

    def __len__(self) -> int:
        return len(self.keys)

    def member_leaves(self, values: np.ndarray) -> dict[int, np.ndarray]:
        """The moved leaves (float64) at each row of parameter values (N, P): {flat leaf
        index: (N, *leaf shape)}, as `bind` would set them; what an `Ensemble` batches."""
        values = np.asarray(values, dtype=np.float64).reshape(-1, len(self))
        leaves = {i: np.repeat(base[None], len(values), axis=0) for i, base in self.base.items()}
        for p, slopes in enumerate(self.slopes):
            change = values[:, p] - self.values[p]
            for i, slope in slopes.items():
                leaves[i] = leaves[i] + slope[None] * change.reshape((-1,) + (1,) * slope.ndim)
        return leaves

    def bind(self, model: Model, values) -> Model:
        """`model` (built from the config, any dtype) with the parameters set to `values`
        ((P,), traced or not): the leaves move by slope x (value - config value)."""
        values = jnp.asarray(values)
        leaves, treedef = jax.tree.flatten(model)
        leaves = list(leaves)
        for p, slopes in enumerate(self.slopes):
            change = values[p] - self.values[p]
            for i, slope in slopes.items():
                leaf = jnp.asarray(leaves[i])  # a float leaf of a model not yet cast
                leaves[i] = leaf + (jnp.asarray(slope) * change).astype(leaf.dtype)
        return jax.tree.unflatten(treedef, leaves)


def _slopes(cfg, key, path, value, base, treedef) -> dict[int, np.ndarray]:
    """Slope of each model leaf that the number at `path` moves, checked to be affine."""
    trials = (value * 0.5, value * 0.25) if value != 0 else (1.0, 2.0)
    moved = []
    for trial in trials:
        try:
            leaves, structure = model_leaves(load_config(cfg, {path: trial}))
        except ConfigError as error:
            raise ConfigError(
                f"{key}: the model cannot be rebuilt with other values of it ({error})"
            ) from None
        if structure != treedef:
            raise ConfigError(
                f"{key}: changing it changes the model's structure, not a number in it; "
                "vary or fit a rate, coefficient or initial value instead"
            )
        moved.append(leaves)
    slopes = {}
    for i, leaf in enumerate(base):
        if not differs(leaf, moved[0][i]):
            continue
        if leaf.shape != moved[0][i].shape or leaf.shape != moved[1][i].shape:
            raise ConfigError(
                f"{key}: changing it changes the shape of the model's arrays (counts); vary "
                "it with separate runs (--set) instead"
            )
        slope = (moved[0][i] - leaf) / (trials[0] - value)
        predicted = leaf + slope * (trials[1] - value)
        scale = max(float(np.max(np.abs(moved[1][i]), initial=0.0)), 1e-300)
        if not np.all(np.isfinite(slope)) or (
            np.max(np.abs(predicted - moved[1][i]), initial=0.0) > _AFFINE_RTOL * scale
        ):
            raise ConfigError(
                f"{key}: the model depends on it non-linearly (geometry, counts); vary it with "
                "separate runs (--set) instead"
            )
        slopes[i] = slope
    if not slopes:
        raise ConfigError(
            f"{key}: changes nothing in the model; name a number of species, populations, "
            "terms, sources or cells (time, grid and output keys cannot be varied in one batch)"
        )
    return slopes
