"""`python -m gpurepro` / `gpurepro`: the same engine for CI systems without Invoke."""
from __future__ import annotations

import argparse
import sys

from . import __version__, app
from .errors import GpuReproError, EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpurepro", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpurepro {__version__}")
    parser.add_argument("--config", help="configuration file (default: gpurepro.yaml at the project root)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("repro", help="compile, arch-check, run and classify steps")
    p.add_argument("steps", nargs="*")
    p.add_argument("--all", action="store_true")
    p.add_argument("--arch")
    p.add_argument("--backend", default="auto", choices=["auto", "docker", "host"])
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--jobs", type=int)
    sub.add_parser("list", help="list the manifest's steps")
    p = sub.add_parser("image-base", help="make the Debian base image with debootstrap")
    p.add_argument("--force", action="store_true")
    p.add_argument("--mirror")
    p = sub.add_parser("image-build", help="build an image target offline")
    p.add_argument("--target", default="toolchain")
    p = sub.add_parser("image-wheels", help="download the pinned wheels for an image target")
    p.add_argument("--target", default="toolchain")
    p = sub.add_parser("headers", help="lay out FlashInfer/CUTLASS headers for the host backend")
    p.add_argument("--wheel")
    p.add_argument("--dest")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "repro":
        return app.repro(args.steps, all=args.all, arch=args.arch, backend=args.backend,
                         compile_only=args.compile_only, jobs=args.jobs, config=args.config)
    if args.command == "list":
        return app.list_steps(config=args.config)
    if args.command == "image-base":
        return app.image_base(force=args.force, mirror=args.mirror, config=args.config)
    if args.command == "image-build":
        return app.image_build(target=args.target, config=args.config)
    if args.command == "image-wheels":
        return app.image_wheels(target=args.target, config=args.config)
    if args.command == "headers":
        return app.toolchain_headers(wheel=args.wheel, dest=args.dest, config=args.config)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own one-line usage error
        return EXIT_BAD_INPUT if exc.code else 0
    try:
        return dispatch(args)
    except GpuReproError as exc:
        print(f"gpurepro: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gpurepro: interrupted", file=sys.stderr)
        return 130
