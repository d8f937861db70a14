"""gpurepro: reproducible GPU-kernel bug hunts (compile, check arch, run, classify, record)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpurepro")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.1.0+checkout"
