"""One error tree for everything the tool reports to a user.

Every error carries the exit code of DESIGN.md's contract and renders as one line: what failed, and
what to do about it. Fields stay on the exception (as docker-py's ContainerError keeps its exit status
and stderr) so callers and tests can inspect them without parsing text.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_DEPARTED = 1
EXIT_BAD_INPUT = 2
EXIT_INFRA = 3


class GpuReproError(Exception):
    """Base of every error the tool reports; `exit_code` follows the contract."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.replace("\n", " ").strip()
        return f"{text} ({self.hint})" if self.hint else text


# --- bad input: exit 2 -------------------------------------------------------------------------
class BadInputError(GpuReproError):
    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError):
    """A YAML file (config or manifest) is unreadable or fails validation."""

    def __init__(self, path, key: str | None, problem: str, *, hint: str | None = None):
        where = f"{path}: {key}" if key else f"{path}"
        super().__init__(f"{where}: {problem}", hint=hint)
        self.path = str(path)
        self.key = key
        self.problem = problem


class ManifestError(ConfigError):
    pass


class UnknownStepError(BadInputError):
    def __init__(self, step: str, known: list[str]):
        close = [k for k in known if k.startswith(step[:6])][:5] or known[:5]
        super().__init__(
            f"unknown step '{step}'",
            hint=f"known steps include: {', '.join(close)}; `invoke repro.list` shows all",
        )
        self.step = step


class UsageError(BadInputError):
    pass


# --- infrastructure: exit 3 --------------------------------------------------------------------
class InfraError(GpuReproError):
    exit_code = EXIT_INFRA


class DockerUnavailableError(InfraError):
    def __init__(self, detail: str):
        super().__init__(
            f"Docker daemon not reachable: {detail}",
            hint="start dockerd or set DOCKER_HOST; or use --backend host",
        )
        self.detail = detail


class ImageMissingError(InfraError):
    def __init__(self, image: str):
        super().__init__(f"image {image} not found", hint="build it with `invoke image.build`")
        self.image = image


class ContainerError(InfraError):
    """A command inside the runner failed for reasons that are not the repro's (exec API, copy)."""

    def __init__(self, container: str, command, detail: str):
        super().__init__(f"container {container}: {detail}")
        self.container = container
        self.command = command
        self.detail = detail


class ToolMissingError(InfraError):
    def __init__(self, tool: str, where: str):
        super().__init__(f"{tool} not found in {where}", hint="check the toolchain image or PATH")
        self.tool = tool
        self.where = where


class InterruptedRun(GpuReproError):
    """Raised on SIGINT/SIGTERM so the run directory is marked `interrupted` before exiting."""

    exit_code = 130


def sigterm_interrupts():
    """SIGTERM (CI cancelling a job) ends a run like Ctrl-C: marked interrupted, nothing half-written.

    Returns the function that restores the previous handler. Off the main thread (nightly targets) it
    does nothing: only the main thread may set handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise InterruptedRun("terminated")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
