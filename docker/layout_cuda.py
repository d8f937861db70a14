#!/usr/bin/env python3
"""Make CUDA_HOME (/opt/cuda) from the CUDA wheels installed in a venv, or from the base image's toolkit.

CUDA 13 wheels install one tree (nvidia/cu13/{bin,include,lib,nvvm}): CUDA_HOME links to it. The CUDA 12
wheels install one tree per package (nvidia/cuda_nvcc, nvidia/cuda_runtime, ...): they are merged with hard
links. The -cu12 nvcc wheels carry no nvcc driver (only ptxas and libnvvm), so a toolchain that needs one
takes the base image's /usr/local/cuda (a CUDA devel image) instead. Standard library only.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import sys

BASE_CUDA = pathlib.Path("/usr/local/cuda")


def _merge(sources: list[pathlib.Path], dest: pathlib.Path) -> None:
    for source in sources:
        for path in sorted(source.rglob("*")):
            if path.is_dir() or path.name == "__init__.py" or "__pycache__" in path.parts:
                continue
            out = dest / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not out.exists():
                os.link(path, out)


def make_cuda_home(site_packages: pathlib.Path, dest: pathlib.Path) -> str:
    nvidia = site_packages / "nvidia"
    if (nvidia / "cu13" / "bin" / "nvcc").is_file():
        dest.symlink_to(nvidia / "cu13")
        return f"{dest} -> {nvidia / 'cu13'}"
    trees = sorted(p for p in nvidia.iterdir() if p.is_dir() and p.name != "__pycache__") if nvidia.is_dir() else []
    if any((t / "bin" / "nvcc").is_file() for t in trees):
        _merge(trees, dest)
        return f"{dest}: merged {', '.join(t.name for t in trees)}"
    if (BASE_CUDA / "bin" / "nvcc").is_file():
        dest.symlink_to(BASE_CUDA.resolve())
        return f"{dest} -> {BASE_CUDA.resolve()} (the CUDA wheels carry no nvcc; the base image's toolkit)"
    raise SystemExit("layout_cuda: no nvcc in the CUDA wheels (the -cu12 wheels carry only ptxas and libnvvm) "
                     f"nor at {BASE_CUDA}: use a CUDA devel base image for this toolchain")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: layout_cuda.py SITE_PACKAGES DEST")
    dest = pathlib.Path(argv[1])
    if dest.is_symlink() or dest.exists():
        shutil.rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
    print(make_cuda_home(pathlib.Path(argv[0]), dest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
