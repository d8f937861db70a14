"""Glue that keeps tasks.py thin: engine errors become invoke.Exit with the contract's exit code, and Invoke's
own command-line errors become usage errors (exit 2, one line, a hint) instead of its exit 1 (which the
contract reserves for "some outcome departed")."""
from __future__ import annotations

import functools

from invoke import Exit, task

from .errors import EXIT_BAD_INPUT, GpuReproError


BODIES: dict[str, object] = {}  # task body by name: what the warm engine's child runs (gpurepro/warm.py)


def engine_task(*task_args, **task_kwargs):
    """Like @task; the body returns an exit code, a GpuReproError becomes one line and its code. In a terminal
    the body runs in the warm engine when one answers (same output, files and exit code), else here."""

    def decorate(body):
        BODIES[body.__name__] = body

        @functools.wraps(body)
        def wrapper(c, *args, **kwargs):
            from . import warm

            answered = warm.run_remote(body.__name__, list(args), kwargs) if warm.enabled() else None
            code, message = answered if answered is not None else run_body(body, c, args, kwargs)
            if code or message:
                raise Exit(message or None, code=code)

        return task(wrapper, *task_args, **task_kwargs)

    if len(task_args) == 1 and callable(task_args[0]) and not task_kwargs:
        body, task_args = task_args[0], ()
        return decorate(body)
    return decorate


def run_body(body, c, args, kwargs) -> tuple[int, str]:
    """(exit code, the lines to print on stderr): a GpuReproError is one line each, Ctrl-C exit 130."""
    try:
        return body(c, *args, **kwargs) or 0, ""
    except GpuReproError as exc:  # one line each: a config with three problems prints three
        return exc.exit_code, "\n".join(f"gpurepro: {line}" for line in exc.lines())
    except KeyboardInterrupt:
        return 130, "gpurepro: interrupted"


def run_task(name: str, args: list, kwargs: dict) -> tuple[int, str]:
    """The warm engine's child: the named task's body, as the command line would have run it."""
    from . import commands  # noqa: F401 - registers the bodies

    return run_body(BODIES[name], None, args, kwargs)


def usage_line(message: str) -> str:
    """Invoke's parse error as our one line, with what to do about it."""
    message = " ".join(str(message).split())
    hint = "`invoke --help TASK` lists a task's options"
    if message.startswith("No idea what '") and not message.startswith("No idea what '-"):
        hint = "several steps go in one argument, comma-separated (invoke repro step06,step13)"
    elif "did not receive required positional arguments" in message:
        hint = "name one or more steps, comma-separated, or `all`; `invoke repro.list` shows them"
    return f"gpurepro: usage: {message} ({hint})"


def install_usage_errors() -> None:
    """Invoke exits 1 on a parse error and offers no hook for it; the parse runs after tasks.py is imported, so
    wrapping the Program's two parse steps here is the one place to give them the contract's exit code 2."""
    from invoke.exceptions import ParseError
    from invoke.program import Program

    if getattr(Program, "_gpurepro_usage_errors", False):
        return
    for name in ("parse_tasks", "parse_cleanup"):
        original = getattr(Program, name)

        def wrapped(self, _original=original):
            try:
                return _original(self)
            except ParseError as exc:
                raise Exit(usage_line(str(exc)), code=EXIT_BAD_INPUT) from None

        setattr(Program, name, functools.wraps(original)(wrapped))
    Program._gpurepro_usage_errors = True
