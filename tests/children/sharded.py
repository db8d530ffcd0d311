"""Sharded runs for tests/test_parallel.py, in a process of its own: JAX fixes the number of
CPU devices when it starts, so this process splits the CPU into 8 devices (as
`ilsim run --devices 8` does) before anything else touches JAX.

    python tests/children/sharded.py steppers CASES_JSON
    python tests/children/sharded.py checkpoint CONFIG_JSON   (writes into the working folder)
    python tests/children/sharded.py transforms
    python tests/children/sharded.py dots
    python tests/children/sharded.py conservation CASES_JSON

Each prints one JSON object, on its last line of output."""

from __future__ import annotations

import json
import shutil
import sys

import jax
import numpy as np

from engine.numerics import parallel

DEVICES = 8


def _model(shape, faces):
    """IL-2 and IL-10 with T cells on a rough field: chemotaxis, secretion, uptake and
    conversion, with neumann, dirichlet or robin faces."""
    import engine
    from engine.model.terms import Conversion, Secretion, Uptake

    grid = engine.Grid(shape, spacing=10.0)
    rng = np.random.default_rng(1)
    faces = {
        "neumann": {},
        "dirichlet": {"x_min": engine.Dirichlet(0.5)},
        "robin": {"x_min": engine.Robin(0.5, 0.3)},
    }[faces]
    boundary = engine.Boundary.from_faces(len(shape), **faces)
    il2 = engine.Species(
        "IL2", diffusion=100.0, decay=1e-3, boundary=boundary, initial=rng.random(shape)
    )
    il10 = engine.Species("IL10", diffusion=60.0, decay=2e-3, boundary=boundary)
    cells = engine.Population(
        "T",
        motility=1.0,
        chemotaxis_species="IL2",
        chemotaxis_sensitivity=5.0,
        initial=1e-4 * (1 + rng.random(shape)),
    )
    terms = (
        Secretion("IL10", "T", 100.0),
        Secretion("IL2", "T", 50.0),
        Uptake("IL2", "T", k_on=1.0, receptors=1e3),
        Conversion("IL2", "IL10", 1e-3),
    )
    return engine.Model(grid, species=(il2, il10), populations=(cells,), terms=terms)


def steppers(cases) -> dict:
    """Five steps of each (shape, mesh, stepper, dtype, faces) case split over the mesh and on
    one device: the largest relative difference, and how many devices hold the fields."""
    import engine

    result = {}
    for shape, mesh, stepper, dtype, faces in cases:
        model = _model(tuple(shape), faces)
        single = engine.Simulation(model, stepper=stepper, dtype=dtype)
        dt = 20.0 if stepper != "explicit" else single.time_step(single.initial_state())
        reference = single.advance_steps(single.initial_state().fields, 0.0, dt, 5)
        sim = engine.Simulation(model, stepper=stepper, mesh=mesh, dtype=dtype)
        fields = sim.advance_steps(sim.initial_state().fields, 0.0, dt, 5)
        diff = max(
            float(np.max(np.abs(np.asarray(v) - ref)) / np.max(np.abs(ref)))
            for k, v in fields.items()
            for ref in [np.asarray(reference[k])]
        )
        key = f"{len(shape)}D {stepper} {dtype} {faces} {mesh}"
        devices = min(len(v.sharding.device_set) for v in fields.values())
        result[key] = dict(diff=diff, devices=devices)
    return result


def diffusing_model(stepper: str, transport: str, shape):
    """A rough field that only diffuses (imex) or a population that only moves, beside a
    species (quasi_steady), with unequal spacing: `transport` "spectral" (constant D,
    zero-flux faces), "periodic" (constant D, periodic faces) or "cg" (D varying by voxel,
    zero-flux faces: TR-BDF2 with CG). Returns the model and the conserved field's name."""
    import engine

    rng = np.random.default_rng(4)
    grid = engine.Grid(tuple(shape), spacing=(10.0, 12.0, 9.0)[: len(shape)])
    face = engine.Periodic() if transport == "periodic" else engine.Neumann()
    boundary = engine.Boundary.uniform(len(shape), face)
    D = rng.uniform(20.0, 80.0, grid.shape) if transport == "cg" else 50.0
    start = rng.uniform(0.0, 10.0, grid.shape)
    if stepper == "quasi_steady":
        cells = engine.Population("n", motility=D, initial=start, boundary=boundary)
        species = engine.Species("c", diffusion=100.0, decay=1e-2)
        return engine.Model(grid, species=(species,), populations=(cells,)), "n"
    species = engine.Species("c", diffusion=D, initial=start, boundary=boundary)
    return engine.Model(grid, species=(species,)), "c"


def conservation(cases) -> dict:
    """1,000 float32 steps of 20 s of each (stepper, transport, shape, mesh) case
    (`diffusing_model`) on one device and split over the mesh: each run's relative change of
    the total, the largest relative difference between them, and the devices that held the
    split field."""
    import engine

    result = {}
    for stepper, transport, shape, mesh in cases:
        model, name = diffusing_model(stepper, transport, shape)
        outcome = {}
        for label, split in (("single", None), ("split", mesh)):
            sim = engine.Simulation(model, stepper=stepper, mesh=split, dtype="float32")
            start = sim.initial_state().fields
            total = np.sum(np.asarray(start[name], np.float64))
            fields = sim.advance_steps(start, 0.0, 20.0, 1000)
            outcome[label] = np.asarray(fields[name])
            outcome[f"drift_{label}"] = float(np.sum(outcome[label], dtype=np.float64) / total - 1)
            outcome["devices"] = len(fields[name].sharding.device_set)
        single, split = outcome.pop("single"), outcome.pop("split")
        outcome["diff"] = float(np.max(np.abs(split - single)) / np.max(single))
        result[f"{stepper} {transport} {shape} {mesh}"] = outcome
    return result


def checkpoint(config) -> dict:
    """A run of `config` on 4 devices, resumed to twice its end on 1 and on 8 devices, against
    a straight run to that end: frame counts and relative differences at the end."""
    import engine
    from engine.io.reader import open_output
    from engine.runs.driver import run

    end = engine.load_config(config).time.end
    longer = engine.load_config(config, {"time.end": 2 * end})
    first = engine.Simulation(engine.load_config(config), devices=4)
    result = {"layout": str(first.mesh.shape)}
    run(first, "four.h5", quiet=True)
    for devices in (1, 8):
        shutil.copy("four.h5", f"resumed{devices}.h5")
        run(
            engine.Simulation(longer, devices=devices),
            f"resumed{devices}.h5",
            resume=True,
            quiet=True,
        )
    run(engine.Simulation(longer), "straight.h5", quiet=True)
    with open_output("straight.h5") as straight:
        expected = straight.frame("IL2", -1)
        result["frames"] = straight.n_frames
        for devices in (1, 8):
            with open_output(f"resumed{devices}.h5") as out:
                result[f"frames{devices}"] = out.n_frames
                got = out.frame("IL2", -1)
                result[f"diff{devices}"] = float(np.max(np.abs(got - expected)) / np.max(expected))
                total = out.summary["IL2_total"][-1]
                expected_total = straight.summary["IL2_total"][-1]
                result[f"summary{devices}"] = float(abs(total / expected_total - 1))
    return result


def _split_and_whole(function, x, mesh, shape):
    """`function(x, mesh)` jitted on one device and on `mesh`."""
    single = jax.jit(lambda x: function(x, None))(x)
    split = jax.jit(lambda x: function(x, mesh))(parallel.place(x, mesh, shape))
    return single, split


def transforms() -> dict:
    """Values that differ between split and single-device DCTs (matrix products) and FFTs,
    forward and inverse, per case."""
    from engine.numerics import spectral

    result = {}
    for shape, mesh_shape in [((128, 128), [4]), ((32, 32, 16), [2, 2]), ((64, 32, 16), [4, 2])]:
        mesh = parallel.device_mesh(mesh_shape, shape)
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        for inverse in (False, True):

            def transform(x, mesh, inverse=inverse, shape=shape):
                with parallel.layout(mesh):
                    return spectral.basis_transform(x, range(len(shape)), inverse=inverse)

            single, split = _split_and_whole(transform, x, mesh, shape)
            key = f"{shape} {mesh_shape} inverse={inverse}"
            result[key] = int(np.count_nonzero(np.asarray(single) != np.asarray(split)))
            for kinds in [("neumann", "neumann"), ("dirichlet", "neumann")]:

                def fft(x, mesh, inverse=inverse, shape=shape, kinds=kinds):
                    with parallel.layout(mesh):
                        for axis in range(len(shape)):
                            x = spectral.fft_basis_transform(x, axis, *kinds, inverse=inverse)
                        return x

                single, split = _split_and_whole(fft, x, mesh, shape)
                key = f"FFT {kinds} {shape} {mesh_shape} inverse={inverse}"
                result[key] = int(np.count_nonzero(np.asarray(single) != np.asarray(split)))
    return result


def dots() -> dict:
    """`parallel.dot` split and on one device, with fused producers and a transform's output
    as factors: which differ, and the first one's error against the exact sum."""
    from engine.numerics import spectral

    result = {}
    for shape, mesh_shape in [((32, 24), [4]), ((16, 16, 8), [2, 2]), ((64, 32, 16), [4, 2])]:
        mesh = parallel.device_mesh(mesh_shape, shape)
        x = np.random.default_rng(0).random(shape).astype(np.float32)

        def products(x, mesh, shape=shape):
            with parallel.layout(mesh):
                y = jax.numpy.sin(x) * x + 0.5
                z = spectral.basis_transform(y, range(len(shape)), inverse=True)
                return parallel.dot(x, x), parallel.dot(y * (y - x), x), parallel.dot(y, z)

        single, split = _split_and_whole(products, x, mesh, shape)
        exact = np.sum(x.astype(np.float64) ** 2)
        result[f"{shape} {mesh_shape}"] = dict(
            differing=[float(a) != float(b) for a, b in zip(single, split)],
            error=abs(float(single[0]) - exact) / exact,
        )
    return result


def main(argv: list[str]) -> None:
    parallel.use_cpu_devices(DEVICES)
    command, *rest = argv
    commands = {"steppers": steppers, "checkpoint": checkpoint, "transforms": transforms}
    commands.update(dots=dots, conservation=conservation)
    arguments = [json.loads(text) for text in rest]
    print(json.dumps(commands[command](*arguments)))


if __name__ == "__main__":
    main(sys.argv[1:])
