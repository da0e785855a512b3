"""What every stage and tool entry point shares: arguments, the workload and its params, the
tracking URI (resolved once, here), one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components import timings, workloads
from components.cluster.connect import cause_line, lost_head_now, quiet_loggers, root_cause
from components.params import load_params
from components.tracking.server import tracking_uri
from components.workloads.base import Workload


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with `--workload` (any in the workload table) and `--params`."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = workloads.names()
    p.add_argument("--workload", choices=names, default=names[0])
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return p


def paths(*flags: str, optional: tuple[str, ...] = ()) -> Callable[[argparse.ArgumentParser], None]:
    """Add required path flags (and optional ones) to a stage's parser."""
    def add(p: argparse.ArgumentParser) -> None:
        for flag in flags:
            p.add_argument(flag, required=True)
        for flag in optional:
            p.add_argument(flag)
    return add


def params(args: argparse.Namespace) -> Any:
    """The whole params file, validated (raises ParamsError naming the key)."""
    return load_params(args.params)


def workload(args: argparse.Namespace) -> tuple[Workload, Any]:
    """`--workload` and its validated params section."""
    return workloads.get(args.workload), getattr(params(args), args.workload)


def main(fn: Callable[[argparse.Namespace], None], description: str,
         add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Run a stage: parse args, resolve the tracking URI once (`args.tracking_uri`), call `fn`,
    turn any failure into one line and exit 1."""
    p = parser(description)
    if add_args:
        add_args(p)
    args = p.parse_args()
    args.tracking_uri = tracking_uri()
    quiet_loggers()
    stage = f"{Path(sys.argv[0]).stem}@{args.workload}"
    timings.mark("ready")  # imports and argument parsing done: the rest is the stage's own
    try:
        fn(args)
        timings.flush(stage, ok=True)
        _exit_now(0)
    except KeyboardInterrupt:
        timings.flush(stage, ok=False)
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # every failure ends as one clear line and a non-zero exit
        timings.flush(stage, ok=False)
        _quiet_ray()
        if os.environ.get("TRAINYARD_TRACEBACK"):  # for bug reports: the whole story
            import traceback

            traceback.print_exc()
        root = root_cause(err)
        from components.tracking.busy import busy_line
        from components.tracking.server import denied

        if (why := lost_head_now()) is not None:
            print(f"error: {why}", file=sys.stderr)
            sys.exit(1)

        if (why := denied(root, args.tracking_uri) or busy_line(err, args.tracking_uri)) is not None:
            print(f"error: {why}", file=sys.stderr)
            sys.exit(1)
        prefix = "" if _is_ours(root) else f"{type(root).__name__}: "
        print(f"error: {prefix}{cause_line(root)}", file=sys.stderr)
        sys.exit(1)


def _exit_now(code: int) -> None:
    """Exit after what `sys.exit` would run (atexit: Ray's disconnect, logging, temp-dir
    finalizers) but without tearing down every module: after torch, Ray and MLflow are
    imported that teardown alone took 1.3-1.5 s of each stage's wall here, for nothing."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own exit handlers, as sys.exit runs them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _quiet_ray() -> None:
    # Ray relays worker logs asynchronously; stop it first so the error line comes last.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()


def _is_ours(err: BaseException) -> bool:
    from components.cluster.resources import ResourceError
    from components.config import ParamsError
    from components.data.parquet import DataError
    from components.data.sources import SourceError
    from components.tracking.server import TrackingError

    return isinstance(err, ParamsError | DataError | SourceError | ResourceError | TrackingError)
