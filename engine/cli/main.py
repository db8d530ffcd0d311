"""The `ilsim` command line: the parser assembled from the command groups (`simulate`: run,
validate, demo; `batch`: sweep, fit; `files`: info, plot, profile, movie; `bench`: bench) and
`main`, which maps what a command raises to the exit status. Exit status: 0 done, 1 internal
error or a diverged run, 2 bad input (one line on stderr, no traceback), 130 interrupted (file
flushed, resumable).

JAX, pint and pydantic are imported by the handlers that need them, never here: `ilsim info`
and the figures load none of them."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import warnings

import engine


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"ilsim: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `ilsim` parser with every command; each sets `handler`, its function of the
    parsed arguments returning the exit status. The command groups are imported here, not
    with this module, so that `console` catches an interrupt while they load."""
    from engine.cli import batch, bench, files, simulate

    parser = _Parser(prog="ilsim", description=engine.__doc__)
    parser.add_argument("--version", action="version", version=f"ilsim {engine.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    simulate.register(commands)
    batch.register(commands)
    files.register(commands)
    bench.register(commands)
    return parser


def _raised_by(module: str, name: str) -> tuple[type, ...]:
    """Exception class `name` of `module`, as a tuple for an except clause; empty when no
    command has imported that module (the config layer loads pydantic, the run driver JAX),
    in which case nothing can have raised one."""
    loaded = sys.modules.get(module)
    return () if loaded is None else (getattr(loaded, name),)


class Interrupts:
    """The handler of SIGINT and SIGTERM until a run's frame loop takes them over: keep the
    signal in `received`, which the loop reads (`runs.driver`), and raise KeyboardInterrupt,
    except inside a garbage-collection callback (JAX has one), where Python would print
    and drop it: the run then stops at its first frame."""

    def __init__(self):
        self.received: list[int] = []

    def __call__(self, signum, frame):
        self.received.append(signum)
        callbacks = {getattr(c, "__code__", None) for c in gc.callbacks}
        while frame is not None:
            if frame.f_code in callbacks:
                return
            frame = frame.f_back
        raise KeyboardInterrupt


def _note(message, category, filename, lineno, file=None, line=None):
    """A warning raised by a command, as one line on stderr."""
    print(f"ilsim: note: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = Interrupts()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _note
            return args.handler(args)
    except KeyboardInterrupt:
        print(f"ilsim: {args.command} interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (
        *_raised_by("engine.config.errors", "ConfigError"),
        *_raised_by("engine.runs.driver", "RunError"),
    ) as error:
        print(f"ilsim: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"ilsim: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except _raised_by("engine.runs.driver", "Interrupted") as error:
        print(f"ilsim: {error}", file=sys.stderr)
        return 130
    except _raised_by("engine.runs.driver", "Diverged") as error:
        print(f"ilsim: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if os.environ.get("ILSIM_DEBUG"):
            raise
        print(
            f"ilsim: internal error: {type(error).__name__}: {error} "
            "(set ILSIM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def console() -> None:
    """The `ilsim` command: `main`'s status as the process's. An interrupt exits 130 at
    once, also one while the commands load: where the KeyboardInterrupt passed through a
    library's start-up code, Python would otherwise end the process by SIGINT after `main`
    returned (status -2 to a parent that waits on it). Once `main` has returned, SIGINT is
    ignored: one during the libraries' exit handlers (JAX's) printed a traceback."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("ilsim: interrupted", file=sys.stderr)
        status = 130
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)
