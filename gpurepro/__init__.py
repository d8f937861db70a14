"""gpurepro: reproducible GPU-kernel bug hunts (compile, check arch, run, classify, record)."""


def __getattr__(name: str):
    # __version__ on first use: importlib.metadata costs every command ~10 ms of start-up otherwise
    if name != "__version__":
        raise AttributeError(f"module 'gpurepro' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("gpurepro")
    except PackageNotFoundError:  # running from a checkout without installing
        found = "0.1.0+checkout"
    globals()["__version__"] = found
    return found
