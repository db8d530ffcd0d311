"""Options and set-up shared by the commands that run a config (run, validate, sweep, fit):
--set overrides, the output flags, and the choice of backend and devices. JAX and the config
layer are imported only when a command uses them."""

from __future__ import annotations


def add_set_option(parser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override a config key, e.g. --set time.end="2 h"',
    )


def add_output_options(parser) -> None:
    """The options of the commands that write a run's file: ilsim run and ilsim sweep."""
    parser.add_argument("--resume", action="store_true", help="continue from the file's checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def overrides(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as {dotted key: value}."""
    from engine.config.loading import parse_override

    return dict(parse_override(text) for text in pairs)


def load(args):
    """The config named by `args.config`, with the --set overrides applied."""
    from engine.config.loading import load_config

    return load_config(args.config, overrides=overrides(args.set))


def select_backend(backend: str | None) -> None:
    """--backend cpu|gpu: JAX's platform; ValueError where no such device is available."""
    if backend is None:
        return
    import jax

    jax.config.update("jax_platforms", {"cpu": "cpu", "gpu": "cuda"}[backend])
    try:
        jax.devices()
    except (RuntimeError, AssertionError):  # jax 0.10 asserts where no platform initialises
        raise ValueError(f"--backend {backend}: no {backend} device is available here") from None


def select_devices(devices: int | None) -> None:
    """--devices N: where the run falls back to the CPU, it is split into N devices (this
    touches only the CPU backend, so it is harmless where accelerators run)."""
    if devices is None:
        return
    if devices < 1:
        raise ValueError(f"--devices {devices}: must be >= 1")
    from engine.numerics.parallel import use_cpu_devices

    use_cpu_devices(devices)


def simulation(args):
    """The `engine.Simulation` of the config in `args` (with --set, --devices, --kernels),
    joining a distributed run first where the config asks for one."""
    import engine

    cfg = load(args)
    if cfg.parallel.distributed:
        from engine.numerics.parallel import initialize_distributed

        initialize_distributed(cfg.parallel.heartbeat_timeout)
    devices = getattr(args, "devices", None)
    return engine.Simulation(cfg, devices=devices, kernels=getattr(args, "kernels", "auto"))
