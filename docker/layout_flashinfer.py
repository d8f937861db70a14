#!/usr/bin/env python3
"""Lay out the headers shipped in a flashinfer-python wheel as FlashInfer's source tree.

The real vllm-dev container has FlashInfer checked out at /workspace/flashinfer, with CUTLASS under
3rdparty/. The wheel carries the same headers under flashinfer/data/; this maps one onto the other so
repro programs compile with the same -I flags in our image, on a GPU host, and in vllm-dev.
Standard library only: it runs inside a bare image and on hosts without gpurepro installed.
"""
from __future__ import annotations

import argparse
import hashlib
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


def layout(wheel: pathlib.Path, dest: pathlib.Path, expected_sha256: str | None = None) -> int:
    if expected_sha256 and sha256_of(wheel) != expected_sha256:
        raise SystemExit(f"layout_flashinfer: sha256 of {wheel} does not match the pinned hash")
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            for prefix, target in LAYOUT.items():
                if info.filename.startswith(prefix):
                    rel = info.filename[len(prefix):]
                    if rel.startswith("/") or ".." in pathlib.PurePosixPath(rel).parts:
                        raise SystemExit(f"layout_flashinfer: unsafe path in wheel: {info.filename}")
                    out = dest / target / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    count += 1
                    break
    if count == 0:
        raise SystemExit(f"layout_flashinfer: no headers found in {wheel}")
    (dest / "version.txt").write_text(wheel_version(wheel.name) + "\n")
    return count


def pinned_hash(requirements: pathlib.Path) -> str | None:
    match = re.search(r"--hash=sha256:([0-9a-f]{64})", requirements.read_text())
    return match.group(1) if match else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=pathlib.Path)
    parser.add_argument("dest", type=pathlib.Path)
    parser.add_argument("--requirements", type=pathlib.Path, help="file holding the pinned --hash")
    args = parser.parse_args(argv)
    expected = pinned_hash(args.requirements) if args.requirements else None
    count = layout(args.wheel, args.dest, expected)
    print(f"laid out {count} headers of {args.wheel.name} under {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
