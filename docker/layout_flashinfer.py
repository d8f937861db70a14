#!/usr/bin/env python3
"""Lay out the headers shipped in a flashinfer-python wheel as FlashInfer's source tree.

The real vllm-dev container has FlashInfer checked out at /workspace/flashinfer, with CUTLASS under
3rdparty/. The wheel carries the same headers under flashinfer/data/; this maps one onto the other so
repro programs compile with the same -I flags in our image, on a GPU host, and in vllm-dev.
A toolchain may lay a separate CUTLASS over FlashInfer's (the nvidia-cutlass wheel's C++ headers, or a
checked-out CUTLASS tree): then 3rdparty/cutlass comes entirely from that source.
Standard library only: it runs inside a bare image and on hosts without gpurepro installed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import shutil
import sys
import zipfile

# wheel prefix -> destination relative to the FlashInfer root
LAYOUT = {
    "flashinfer/data/include/": "include/",
    "flashinfer/data/cutlass/include/": "3rdparty/cutlass/include/",
    "flashinfer/data/cutlass/tools/util/include/": "3rdparty/cutlass/tools/util/include/",
}
CUTLASS_DEST = "3rdparty/cutlass/"
# nvidia-cutlass wheel prefix (its C++ sources) -> destination
CUTLASS_WHEEL_LAYOUT = {
    "cutlass_library/source/include/": "3rdparty/cutlass/include/",
    "cutlass_library/source/tools/util/include/": "3rdparty/cutlass/tools/util/include/",
}
# a CUTLASS source tree (git checkout) -> destination
CUTLASS_TREE_LAYOUT = {"include/": "3rdparty/cutlass/include/", "tools/util/include/": "3rdparty/cutlass/tools/util/include/"}
VERSION_RE = {part: re.compile(rf"#define\s+CUTLASS_{part}\s+(\d+)") for part in ("MAJOR", "MINOR", "PATCH")}


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_version(name: str) -> str:
    match = re.match(r"flashinfer_python-([^-]+)-", name)
    if not match:
        raise SystemExit(f"layout_flashinfer: {name} is not a flashinfer_python wheel")
    return match.group(1)


def _safe(rel: str, origin: str) -> str:
    if rel.startswith("/") or ".." in pathlib.PurePosixPath(rel).parts:
        raise SystemExit(f"layout_flashinfer: unsafe path in {origin}: {rel}")
    return rel


def _zip_entries(wheel: pathlib.Path, layout: dict[str, str]) -> dict[str, tuple]:
    entries = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            for prefix, target in layout.items():
                if info.filename.startswith(prefix):
                    rel = _safe(info.filename[len(prefix):], wheel.name)
                    entries[target + rel] = ("zip", wheel, info.filename)
                    break
    return entries


def plan(wheel: pathlib.Path, cutlass_wheel: pathlib.Path | None = None,
         cutlass_tree: pathlib.Path | None = None) -> dict[str, tuple]:
    """destination path (relative to the FlashInfer root) -> where its bytes come from, sorted by path."""
    entries = _zip_entries(wheel, LAYOUT)
    if cutlass_wheel is not None or cutlass_tree is not None:
        # the separate CUTLASS replaces FlashInfer's whole copy: no stale header of the other release survives
        entries = {rel: src for rel, src in entries.items() if not rel.startswith(CUTLASS_DEST)}
        if cutlass_wheel is not None:
            entries.update(_zip_entries(cutlass_wheel, CUTLASS_WHEEL_LAYOUT))
        else:
            for prefix, target in CUTLASS_TREE_LAYOUT.items():
                base = cutlass_tree / prefix
                for path in sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []:
                    entries[target + _safe(path.relative_to(base).as_posix(), str(cutlass_tree))] = ("file", path, None)
    return dict(sorted(entries.items()))


def _open(source: tuple, zips: dict):
    kind, path, member = source
    if kind == "file":
        return open(path, "rb")
    if path not in zips:
        zips[path] = zipfile.ZipFile(path)
    return zips[path].open(member)


def tree_hash(entries: dict[str, tuple]) -> str:
    """sha256 over every laid-out path and its content's sha256: equal trees, equal hash, wherever they come from."""
    digest, zips = hashlib.sha256(), {}
    try:
        for rel, source in entries.items():
            with _open(source, zips) as fh:
                content = hashlib.sha256(fh.read()).hexdigest()
            digest.update(f"{rel}\0{content}\n".encode())
    finally:
        for zf in zips.values():
            zf.close()
    return digest.hexdigest()


def cutlass_version(root: pathlib.Path) -> str | None:
    """The CUTLASS version a laid-out tree carries (its cutlass/version.h), or None."""
    header = root / CUTLASS_DEST / "include/cutlass/version.h"
    if not header.is_file():
        return None
    text = header.read_text(errors="replace")
    parts = [VERSION_RE[p].search(text) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def layout(wheel: pathlib.Path, dest: pathlib.Path, expected_sha256: str | None = None, *,
           cutlass_wheel: pathlib.Path | None = None, cutlass_tree: pathlib.Path | None = None,
           expect_cutlass: str | None = None) -> int:
    if expected_sha256 and sha256_of(wheel) != expected_sha256:
        raise SystemExit(f"layout_flashinfer: sha256 of {wheel} does not match the pinned hash")
    entries = plan(wheel, cutlass_wheel, cutlass_tree)
    if not entries:
        raise SystemExit(f"layout_flashinfer: no headers found in {wheel}")
    zips: dict = {}
    try:
        for rel, source in entries.items():
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with _open(source, zips) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        for zf in zips.values():
            zf.close()
    (dest / "version.txt").write_text(wheel_version(wheel.name) + "\n")
    if expect_cutlass:
        found = cutlass_version(dest)
        if found != expect_cutlass:
            raise SystemExit(f"layout_flashinfer: the headers carry CUTLASS {found or 'of no known version'}, "
                             f"the toolchain declares {expect_cutlass}")
    return len(entries)


def _find_by_hash(wheelhouse: pathlib.Path, pin: dict) -> pathlib.Path:
    prefix = re.sub(r"[-_.]+", "_", pin["name"]).lower() + "-"
    for path in sorted(wheelhouse.glob("*.whl")):
        if path.name.lower().startswith(prefix) and sha256_of(path) == pin["sha256"]:
            return path
    raise SystemExit(f"layout_flashinfer: no {pin['name']}=={pin['version']} wheel with the pinned sha256 in {wheelhouse}")


def layout_toolchain(spec: dict, wheelhouse: pathlib.Path, dest: pathlib.Path, *,
                     cutlass_tree: pathlib.Path | None = None) -> int:
    """Lay out a toolchain's headers: spec = {"flashinfer": pin, "cutlass_wheel": pin|None, "cutlass_version": "x.y.z"}."""
    wheel = _find_by_hash(wheelhouse, spec["flashinfer"])
    cutlass_wheel = _find_by_hash(wheelhouse, spec["cutlass_wheel"]) if spec.get("cutlass_wheel") else None
    return layout(wheel, dest, cutlass_wheel=cutlass_wheel, cutlass_tree=cutlass_tree,
                  expect_cutlass=spec.get("cutlass_version"))


def pinned_hash(requirements: pathlib.Path) -> str | None:
    match = re.search(r"--hash=sha256:([0-9a-f]{64})", requirements.read_text())
    return match.group(1) if match else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=pathlib.Path, help="the flashinfer wheel, or with --spec the wheelhouse")
    parser.add_argument("dest", type=pathlib.Path)
    parser.add_argument("--requirements", type=pathlib.Path, help="file holding the pinned --hash")
    parser.add_argument("--spec", type=pathlib.Path, help="a toolchain's headers.json (pins found by hash in WHEEL)")
    parser.add_argument("--cutlass-tree", type=pathlib.Path, help="a CUTLASS checkout laid over FlashInfer's")
    args = parser.parse_args(argv)
    if args.spec:
        count = layout_toolchain(json.loads(args.spec.read_text()), args.wheel, args.dest,
                                 cutlass_tree=args.cutlass_tree)
    else:
        expected = pinned_hash(args.requirements) if args.requirements else None
        count = layout(args.wheel, args.dest, expected, cutlass_tree=args.cutlass_tree)
    print(f"laid out {count} headers under {args.dest} (CUTLASS {cutlass_version(args.dest)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
