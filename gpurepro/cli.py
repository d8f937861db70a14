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
    p = sub.add_parser("kernels-test", help="run tests/kernels in the container (or on this host), record JUnit")
    p.add_argument("--backend", default="auto", choices=["auto", "docker", "host"])
    p.add_argument("-k", "--keyword", help="pytest -k expression")
    p.add_argument("-m", "--marker", help="pytest -m expression (e.g. gpu)")
    p.add_argument("--python", help="host backend: the interpreter for the tests (default: this one)")
    p.add_argument("--timeout", type=int, help="seconds for the whole session (default: kernels.timeout_s)")
    p = sub.add_parser("image-base", help="make the Debian base image with debootstrap")
    p.add_argument("--force", action="store_true")
    p.add_argument("--mirror")
    p = sub.add_parser("image-build", help="build an image target offline")
    p.add_argument("--target", default="vllm-dev")
    p = sub.add_parser("image-wheels", help="download the pinned wheels for an image target")
    p.add_argument("--target", default="toolchain")
    p = sub.add_parser("headers", help="lay out FlashInfer/CUTLASS headers for the host backend")
    p.add_argument("--wheel")
    p.add_argument("--dest")
    p = sub.add_parser("bundle", help="share and replay runs: create, verify, inspect, replay")
    bundle = p.add_subparsers(dest="bundle_command", required=True)
    b = bundle.add_parser("create", help="pack a run into <run-id>.tar.gz")
    b.add_argument("run", nargs="?")
    b.add_argument("--output")
    for name, text in (("verify", "check a bundle against its MANIFEST.json"),
                       ("inspect", "show a bundle's run without extracting or running anything")):
        bundle.add_parser(name, help=text).add_argument("file")
    b = bundle.add_parser("replay", help="run a bundle's steps again here; old vs new outcomes")
    b.add_argument("file")
    b.add_argument("--backend", choices=["auto", "docker", "host"])
    b.add_argument("--dest")
    p = sub.add_parser("report", help="(re)write a run's index.html and print its path")
    p.add_argument("run", nargs="?")
    p = sub.add_parser("prune", help="remove old runs under reports/ (never the newest or one in use)")
    p.add_argument("--keep", type=int, required=True)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("nightly", help="every step and kernels.test on every target of ci/targets.yaml")
    p.add_argument("targets", nargs="*", help="target names (default: all)")
    p.add_argument("--targets-file")
    p.add_argument("--steps", help="step ids, comma-separated (default: every step)")
    p.add_argument("--jobs", type=int)
    p = sub.add_parser("report-merge", help="merge per-runner run or nightly directories into one report")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "repro":
        return app.repro(args.steps, all=args.all, arch=args.arch, backend=args.backend,
                         compile_only=args.compile_only, jobs=args.jobs, config=args.config)
    if args.command == "list":
        return app.list_steps(config=args.config)
    if args.command == "kernels-test":
        return app.kernels_test(backend=args.backend, keyword=args.keyword, marker=args.marker, python=args.python,
                                timeout=args.timeout, config=args.config)
    if args.command == "image-base":
        return app.image_base(force=args.force, mirror=args.mirror, config=args.config)
    if args.command == "image-build":
        return app.image_build(target=args.target, config=args.config)
    if args.command == "image-wheels":
        return app.image_wheels(target=args.target, config=args.config)
    if args.command == "headers":
        return app.toolchain_headers(wheel=args.wheel, dest=args.dest, config=args.config)
    if args.command == "bundle":
        if args.bundle_command == "create":
            return app.bundle_create(args.run, output=args.output, config=args.config)
        if args.bundle_command == "verify":
            return app.bundle_verify(args.file)
        if args.bundle_command == "inspect":
            return app.bundle_inspect(args.file)
        return app.bundle_replay(args.file, backend=args.backend, dest=args.dest, config=args.config)
    if args.command == "nightly":
        return app.ci_nightly(args.targets, targets_file=args.targets_file, steps=args.steps, jobs=args.jobs,
                              config=args.config)
    if args.command == "report-merge":
        return app.report_merge(args.run_dirs, out=args.out, config=args.config)
    if args.command == "report":
        return app.report(args.run, config=args.config)
    if args.command == "prune":
        return app.reports_prune(args.keep, dry_run=args.dry_run, config=args.config)
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
