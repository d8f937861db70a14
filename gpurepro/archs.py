"""Can this binary run on this GPU? Decided from `cuobjdump --list-elf --list-ptx` before running it.

Measured on an H100: an SM120 binary passes can_implement and then aborts inside initialize(),
which looks like a bug in the repro. Checking the binary's images against the device first turns that
into `skipped: no image for sm_90`, and rules the arch cause of `initialize(): Error Internal` in or out.

Rules (CUDA's compatibility model):
  SASS sm_XYa  runs only on compute capability X.Y          (arch-specific features)
  SASS sm_XYf  runs on X.Z for Z >= Y                        (family-specific)
  SASS sm_XY   runs on X.Z for Z >= Y                        (binary compatible within a major)
  PTX  sm_XYa  JIT-compiles only on X.Y; PTX sm_XYf on X.Z, Z >= Y; plain PTX sm_XY on any cc >= X.Y

One exception, measured with nvcc 13.0: `-arch=sm_120a` embeds plain compute_120 PTX beside the sm_120a
images. Kernels guarded for arch-specific features (CUTLASS's SM120 block-scaled GEMMs) are compiled out
of that PTX, so a JIT of it "runs" a kernel that does nothing useful. Hence a binary with any
arch-specific ('a') image counts only its SASS and 'a'/'f' images; plain PTX counts for generic builds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# "ELF file    2: step01.2.sm_120a.cubin": the number is a per-kind counter, not a module id
IMAGE_RE = re.compile(r"^(?P<kind>ELF|PTX) file\s+\d+:\s+(?P<name>\S+?)(?:\.(?P<module>\d+))?\.?"
                      r"\b(?P<arch>sm_(?P<num>\d{2,3})(?P<suffix>[af]?))\.(?:cubin|ptx)\s*$")
NO_DEVICE_CODE_RE = re.compile(r"does not contain device code")


@dataclass(frozen=True)
class Image:
    kind: str   # "sass" or "ptx"
    major: int
    minor: int
    suffix: str  # "", "a" or "f"

    @property
    def name(self) -> str:
        return f"sm_{self.major}{self.minor}{self.suffix}"

    def runs_on(self, major: int, minor: int) -> bool:
        if self.suffix == "a":
            return (major, minor) == (self.major, self.minor)
        if self.kind == "sass" or self.suffix == "f":
            return major == self.major and minor >= self.minor
        return (major, minor) >= (self.major, self.minor)  # plain PTX: forward compatible through JIT


@dataclass(frozen=True)
class BinaryImages:
    images: tuple[Image, ...]
    host_only: bool = False  # no device code at all: nothing arch-specific can fail

    def runnable_on(self, major: int, minor: int) -> bool:
        if self.host_only:
            return True
        arch_specific = any(image.suffix == "a" for image in self.images)
        counted = [i for i in self.images if not (arch_specific and i.kind == "ptx" and i.suffix == "")]
        return any(image.runs_on(major, minor) for image in counted)

    def describe(self) -> str:
        if self.host_only:
            return "host code only"
        sass = sorted({i.name for i in self.images if i.kind == "sass"})
        ptx = sorted({i.name for i in self.images if i.kind == "ptx"})
        parts = [f"SASS {', '.join(sass)}"] if sass else []
        if ptx:
            parts.append(f"PTX {', '.join(ptx)}")
        return "; ".join(parts) or "no images"


def _split(num: str) -> tuple[int, int]:
    return int(num[:-1]), int(num[-1])


def parse_cuobjdump(text: str) -> BinaryImages:
    if NO_DEVICE_CODE_RE.search(text):
        return BinaryImages(images=(), host_only=True)
    images = []
    for line in text.splitlines():
        match = IMAGE_RE.match(line.strip())
        if match:
            major, minor = _split(match.group("num"))
            kind = "sass" if match.group("kind") == "ELF" else "ptx"
            images.append(Image(kind, major, minor, match.group("suffix")))
    return BinaryImages(images=tuple(dict.fromkeys(images)))


def parse_compute_capability(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


def device_arch(major: int, minor: int) -> str:
    """Manifest key for a device: compute capability 12.1 -> sm_121."""
    return f"sm_{major}{minor}"


# Compile targets nvcc 13.0 accepts (`nvcc --list-gpu-code` in the toolchain image): every SASS arch, and
# the arch-specific (a) and family (f) variants that exist from 9.0 (a) and 10.0 (a, f) on. `--arch` is
# checked against this list (gpurepro.validate.check_arch) before any work.
_NVCC_SASS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)
KNOWN_ARCHS: tuple[str, ...] = tuple(
    f"sm_{num}{suffix}" for num in _NVCC_SASS
    for suffix in ("", *(("a",) if num >= 90 else ()), *(("f",) if num >= 100 else ())))
