"""`ilsim sweep` and `ilsim fit`: many runs of a config at once (a batched sweep, or the
sensitivity of every parameter) and fitting parameters to observed fields, each command's
arguments beside its handler."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from engine.cli import options


def register(commands) -> None:
    """Add sweep and fit to the `ilsim` subcommands."""
    _register_sweep(commands)
    _register_fit(commands)


# ----------------------------------------------------------------------------------------------
# ilsim sweep


def _register_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run many parameter values as one batch, or rank every parameter's sensitivity",
        description="--vary KEY=V1,V2,... runs one member per combination of the values "
        "(--zip: the lists side by side) in one batched run, writing one HDF5 file whose "
        "fields lead with a member axis and whose /members table holds each member's values. "
        "--sensitivity prints d(total of --summary at time.end)/d(parameter) for every numeric "
        "parameter of the model, from one backward pass through the solver.",
    )
    sweep.add_argument("config")
    sweep.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help='values of a config key (numbers in engine units, or "50 um^2/s"), or '
        "KEY=lin:A:B:N / KEY=log:A:B:N",
    )
    sweep.add_argument("--zip", action="store_true", help="pair the value lists, not combine")
    sweep.add_argument("-o", "--output", help="output file (default: CONFIG_sweep.h5)")
    options.add_set_option(sweep)
    sweep.add_argument("--chunk", type=int, metavar="N", help="members per device batch")
    sweep.add_argument("--backend", choices=("cpu", "gpu"))
    sweep.add_argument("--devices", type=int, metavar="N", help="devices sharing the members")
    options.add_output_options(sweep)
    sweep.add_argument(
        "--sensitivity", action="store_true", help="rank every parameter's sensitivity instead"
    )
    sweep.add_argument(
        "--summary",
        metavar="FIELD",
        help="field whose total the sensitivity is of (default: first)",
    )
    sweep.add_argument(
        "--param", action="append", metavar="KEY", help="only these parameters (sensitivity)"
    )
    sweep.set_defaults(handler=_sweep)


def parse_vary(text: str) -> tuple[str, list]:
    """`KEY=V1,V2,...` (each value a number or a quantity with its unit, "50 um^2/s"), or
    `KEY=lin:A:B:N` / `KEY=log:A:B:N` (N values evenly or log-evenly spaced from A to B)."""
    from engine.config.errors import ConfigError
    from engine.config.loading import parse_override
    from engine.runs.sweep import MAX_MEMBERS

    key, value = parse_override(text)
    text = str(value).strip()
    spaced = re.fullmatch(r"(lin|log):([^:]+):([^:]+):(\d+)", text)
    if spaced:
        kind, lo, hi, count = spaced.groups()
        try:
            lo, hi = float(lo), float(hi)
        except ValueError:
            raise ConfigError(f"--vary {key}: {text}: A and B must be numbers") from None
        if kind == "log" and (lo <= 0 or hi <= 0):
            raise ConfigError(f"--vary {key}: {text}: log spacing needs A, B > 0")
        if int(count) > MAX_MEMBERS:
            raise ConfigError(
                f"--vary {key}: {text}: N is more than the {MAX_MEMBERS} members a sweep "
                "takes; give fewer values or split the sweep"
            )
        space = np.geomspace if kind == "log" else np.linspace
        return key, space(lo, hi, int(count)).tolist()
    if re.match(r"(lin|log):", text):
        raise ConfigError(f"--vary {key}: {text}: write lin:A:B:N or log:A:B:N (N values)")
    if isinstance(value, list):  # written as a TOML array
        values = value
    else:
        parts = text.split(",") if text else []
        if not all(part.strip() for part in parts):
            raise ConfigError(f"--vary {key}={text}: an empty value in the list; write V1,V2,...")
        values = [parse_override(f"v={part}")[1] for part in parts]
    if not values:
        raise ConfigError(f"--vary {key}: no values; write KEY=V1,V2,... or KEY=log:A:B:N")
    return key, values


def _vary_table(texts: list[str]) -> dict:
    """The --vary options as {key: values}; a key given twice is refused (as fit --param)."""
    from engine.config.errors import ConfigError
    from engine.config.parameters import display_key

    pairs = [parse_vary(text) for text in texts]
    keys = [display_key(key) for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary: {', '.join(keys)} names a key twice; name each once")
    return dict(pairs)


def _sweep(args) -> int:
    from engine.config.errors import ConfigError
    from engine.runs.driver import run
    from engine.runs.gradients import sensitivity
    from engine.runs.sweep import Ensemble

    given = [option for option in ("param", "summary") if getattr(args, option)]
    if given and not args.sensitivity:
        named = " and ".join(f"--{option}" for option in given)
        raise ConfigError(f"{named}: only with --sensitivity; add --sensitivity or drop {named}")
    options.select_backend(args.backend)
    options.select_devices(args.devices)
    cfg = options.load(args)
    if args.sensitivity:
        if args.vary:
            raise ConfigError("--sensitivity differentiates at the config's values; drop --vary")
        rows = sensitivity(cfg, args.summary, args.param or None)
        _print_sensitivity(rows, args.summary or cfg.field_names[0], cfg.time.end)
        return 0
    if not args.vary:
        raise ConfigError("ilsim sweep: give --vary KEY=V1,V2,... (or --sensitivity)")
    vary = _vary_table(args.vary)
    output = Path(args.output) if args.output else Path(Path(args.config).stem + "_sweep.h5")
    ensemble = Ensemble(cfg, vary, product=not args.zip, chunk=args.chunk, devices=args.devices)
    if not args.quiet:
        print(
            f"sweep: {ensemble.size} members of {', '.join(ensemble.keys)}, "
            f"{ensemble.chunk} per batch on {len(ensemble.devices)} device(s)"
        )
    path = run(ensemble, output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _print_sensitivity(rows, summary: str, end: float) -> None:
    from engine.post.analysis import format_time, text_table

    print(
        f"sensitivity of the total {summary} at {format_time(end)}, ranked by |elasticity| "
        "(% change of the total per % change of the parameter); values in engine units"
    )
    header = ("rank", "parameter", "value", "d total / d value", "elasticity")
    table = [
        (str(i + 1), r.key, f"{r.value:.6g}", f"{r.derivative:.6g}", f"{r.elasticity:+.4g}")
        for i, r in enumerate(rows)
    ]
    print(text_table(header, table))


# ----------------------------------------------------------------------------------------------
# ilsim fit


def _register_fit(commands) -> None:
    fit = commands.add_parser(
        "fit",
        help="fit parameters to observed fields through the differentiated solver",
        description="Least squares of the run's frames against an ilsim output file's fields "
        "(at its times; each field scaled by its observed maximum), over the log of each "
        "parameter, by L-BFGS; prints the fitted values with standard errors from the "
        "Gauss-Newton covariance. The config's values are the start.",
    )
    fit.add_argument("config")
    fit.add_argument("--data", required=True, metavar="OBS.h5", help="observed fields")
    fit.add_argument(
        "--param", action="append", required=True, metavar="KEY", help="parameter to fit"
    )
    fit.add_argument("--field", action="append", metavar="NAME", help="observed field to fit")
    options.add_set_option(fit)
    fit.add_argument("--max-iterations", type=int, default=100)
    fit.add_argument("--backend", choices=("cpu", "gpu"))
    fit.add_argument("--quiet", action="store_true", help="no notes")
    fit.set_defaults(handler=_fit)


def _fit(args) -> int:
    from engine.config.errors import ConfigError
    from engine.runs.gradients import fit

    options.select_backend(args.backend)
    cfg = options.load(args)
    data = Path(args.data)
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file")
    if args.max_iterations < 1:
        raise ConfigError(f"--max-iterations: {args.max_iterations}; give at least 1")
    result = fit(cfg, data, args.param, fields=args.field, max_iterations=args.max_iterations)
    if cfg.time.dtype == "float32" and not args.quiet:
        print(
            "ilsim: note: fitted in float32; --set time.dtype=float64 gives exact gradients",
            file=sys.stderr,
        )
    print(result.table())
    print(
        "fitted config: "
        + " ".join(f"--set {k}={v:.6g}" for k, v in zip(result.keys, result.values))
    )
    if not result.converged:
        print(
            f"ilsim: note: not converged in {result.iterations} iterations; raise "
            "--max-iterations or start nearer (--set)",
            file=sys.stderr,
        )
    return 0
