"""gpurepro's Invoke tasks: `invoke --list` shows them, `invoke --help TASK` a task's options.

The tasks live in gpurepro/commands.py, the one command table that `python -m gpurepro` is built from too.
"""
from gpurepro.commands import ns  # noqa: F401
