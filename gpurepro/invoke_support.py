"""Glue that keeps tasks.py thin: engine errors become invoke.Exit with the contract's exit code."""
from __future__ import annotations

import functools

from invoke import Exit, task

from .errors import GpuReproError


def engine_task(*task_args, **task_kwargs):
    """Like @task; the body returns an exit code, a GpuReproError becomes one line and its code."""

    def decorate(body):
        @functools.wraps(body)
        def wrapper(c, *args, **kwargs):
            try:
                code = body(c, *args, **kwargs)
            except GpuReproError as exc:
                raise Exit(f"gpurepro: {exc.one_line()}", code=exc.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("gpurepro: interrupted", code=130) from None
            if code:
                raise Exit(code=code)

        return task(wrapper, *task_args, **task_kwargs)

    if len(task_args) == 1 and callable(task_args[0]) and not task_kwargs:
        body, task_args = task_args[0], ()
        return decorate(body)
    return decorate
