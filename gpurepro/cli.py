"""`python -m gpurepro` / `gpurepro`: the same commands as the Invoke tasks, for CI systems without Invoke.

The parser is built from the command table (gpurepro/commands.py): every task is a subcommand of the same
name (`python -m gpurepro bundle.verify FILE`), with the same options, defaults and help, and runs the same
task body. Positionals that take several values (steps, run directories) may also be given space-separated.
"""
from __future__ import annotations

import argparse
import sys

from invoke import Context, Exit

from . import __version__
from .errors import EXIT_BAD_INPUT

# names the first `python -m gpurepro` used, still accepted
LEGACY = {"list": "repro.list", "kernels-test": "kernels.test", "nightly": "ci.nightly", "report-merge": "report.merge",
          "prune": "reports.prune", "image-base": "image.base", "image-build": "image.build",
          "image-wheels": "image.wheels", "headers": "toolchain.headers"}
MULTI = {"steps", "run_dirs", "target"}  # comma-separated for Invoke; several words allowed here


def commands() -> dict[str, object]:
    """Every task by its Invoke name (`repro`, `repro.list`, `bundle.verify`, ...), defaults by their short name."""
    from .commands import ns

    out = {}
    for name in sorted(ns.task_names):
        task = ns[name]
        parts = name.split(".")
        # a collection's default task answers to the collection's name, as `invoke repro` does
        is_default = len(parts) == 2 and ns.collections[parts[0]].default == parts[1]
        out[parts[0] if is_default else name] = task
    return out


def task_arguments(task) -> list:
    """Invoke's view of a task's options. Invoke consumes the task's help dict as it builds them; put it back so
    the next caller (another parser, a test) sees the same help."""
    saved = dict(task.help)
    try:
        return task.get_arguments(ignore_unknown_help=True)
    finally:
        task.help = saved


def _flag_names(arg) -> list[str]:
    return [("-" if len(n) == 1 else "--") + n for n in arg.names]


def _add_task(sub, name: str, task) -> None:
    doc = (task.__doc__ or task.body.__doc__ or "").strip()
    parser = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
    for arg in task_arguments(task):
        dest = arg.name.replace("-", "_")
        if arg.positional:
            nargs = "*" if dest in MULTI else "?"
            parser.add_argument(dest, nargs=nargs, help=arg.help, metavar=arg.name.upper())
        elif arg.kind is bool:
            parser.add_argument(*_flag_names(arg), dest=dest, action="store_true", help=arg.help)
        elif arg.kind is list:
            parser.add_argument(*_flag_names(arg), dest=dest, action="append", help=arg.help)
        else:
            parser.add_argument(*_flag_names(arg), dest=dest, type=arg.kind if arg.kind in (int, float) else str,
                                default=arg.default, help=arg.help)
    parser.set_defaults(_task=task)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpurepro", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpurepro {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, task in commands().items():
        _add_task(sub, name, task)
    return parser


def _normalize(argv: list[str]) -> list[str]:
    if not argv:
        return argv
    if argv[0] == "bundle" and len(argv) > 1 and argv[1] in ("create", "verify", "inspect", "replay"):
        argv = [f"bundle.{argv[1]}", *argv[2:]]  # the first CLI's `bundle create`
    return [LEGACY.get(argv[0], argv[0]), *argv[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_normalize(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # argparse printed its own one-line usage error (or --help)
        return EXIT_BAD_INPUT if exc.code else 0
    values = {k: v for k, v in vars(args).items() if k not in ("command", "_task")}
    for key in MULTI & values.keys():
        if isinstance(values[key], list):
            values[key] = ",".join(values[key]) or None
    task = args._task
    try:
        task(Context(), **values)
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("gpurepro: interrupted", file=sys.stderr)
        return 130
    return 0
