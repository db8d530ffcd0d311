"""A sweep split over two CPU devices, for tests/test_ensemble.py, in a process of its own (JAX
fixes the number of CPU devices when it starts).

    python tests/children/split_sweep.py CONFIG_JSON VARY_JSON

prints, as JSON on its last line, the largest relative difference between the split sweep and
the one-device sweep, and how many devices hold the fields of an ensemble's state."""

from __future__ import annotations

import json
import sys

import numpy as np

from engine.numerics import parallel


def main(argv: list[str]) -> None:
    parallel.use_cpu_devices(2)
    import engine
    from engine.runs.sweep import Ensemble

    config, vary = (json.loads(text) for text in argv)
    cfg = engine.load_config(config)
    split = engine.sweep(cfg, vary)
    one = engine.sweep(cfg, vary, devices=1)
    ensemble = Ensemble(cfg, vary)
    state = ensemble.advance(ensemble.initial_state(), 60.0)
    diff = max(
        float(np.max(np.abs(split.fields[k] - v)) / np.max(np.abs(v)))
        for k, v in one.fields.items()
    )
    devices = len(state.fields["IL2"].sharding.device_set)
    print(json.dumps(dict(diff=diff, devices=devices)))


if __name__ == "__main__":
    main(sys.argv[1:])
