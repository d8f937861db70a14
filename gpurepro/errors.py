"""One error tree for everything the tool reports to a user.

Every error carries the exit code of docs/contracts.md and renders as one line: what failed, and
what to do about it. Fields stay on the exception (as docker-py's ContainerError keeps its exit status
and stderr) so callers and tests can inspect them without parsing text.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_DEPARTED = 1
EXIT_BAD_INPUT = 2
EXIT_INFRA = 3


class GpuReproError(Exception):
    """Base of every error the tool reports; `exit_code` follows the contract. `fatal`: the runner itself is gone
    (container stopped, daemon down), so a run stops at once instead of failing each remaining step."""

    exit_code = EXIT_INFRA
    fatal = False

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.replace("\n", " ").strip()
        return f"{text} ({self.hint})" if self.hint else text

    def lines(self) -> list[str]:
        """What the front end prints, one line each (several only for multi-problem input errors)."""
        return [self.one_line()]


# --- bad input: exit 2 -------------------------------------------------------------------------
class BadInputError(GpuReproError):
    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError):
    """A YAML file (config or manifest) is unreadable or fails validation.

    One error may carry several problems (`problems`: (key, problem) pairs, the first one also in
    `key`/`problem`): a file with three mistakes is reported as three lines (`lines()`), not one at a time.
    """

    def __init__(self, path, key: str | None, problem: str, *, hint: str | None = None,
                 problems: list[tuple[str | None, str]] | None = None):
        super().__init__(self._where(path, key, problem), hint=hint)
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.problems: list[tuple[str | None, str]] = list(problems) if problems else [(key, problem)]

    @staticmethod
    def _where(path, key, problem) -> str:
        return f"{path}: {key}: {problem}" if key else f"{path}: {problem}"

    @classmethod
    def collected(cls, path, problems: list[tuple[str | None, str]], *, hint: str | None = None):
        """One error for every problem found in a file (at least one), in the order found."""
        unique = list(dict.fromkeys(problems))
        key, problem = unique[0]
        return cls(path, key, problem, hint=hint, problems=unique)

    def lines(self) -> list[str]:
        out = [self._where(self.path, key, problem).replace("\n", " ") for key, problem in self.problems]
        if self.hint:
            out[-1] += f" ({self.hint})"
        return out

    def one_line(self) -> str:
        if len(self.problems) == 1:
            return super().one_line()
        # where only one line fits (run.json, a JUnit <error>): all problems, the file named once
        rest = "; ".join(f"{key}: {problem}" if key else problem for key, problem in self.problems[1:])
        text = f"{self.message}; {rest} ({len(self.problems)} problems)".replace("\n", " ")
        return f"{text} ({self.hint})" if self.hint else text


class ManifestError(ConfigError):
    pass


class UnknownStepError(BadInputError):
    def __init__(self, step: str, known: list[str]):
        import difflib

        close = difflib.get_close_matches(step, known, n=5, cutoff=0.6)
        hint = (f"did you mean {', '.join(close)}?" if close else f"known steps include: {', '.join(known[:5])};")
        super().__init__(f"unknown step '{step}'", hint=f"{hint} `invoke repro.list` shows all")
        self.step = step
        self.suggestions = close


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


class NvccMissingError(ToolMissingError):
    """The compile toolchain is absent where steps compile (a user's own container, a bare host)."""

    def __init__(self, nvcc: str, where: str, *, hint: str | None = None):
        super().__init__(nvcc, where)
        self.hint = hint or ("use the tool's image (`invoke image.build`, or GPUREPRO_IMAGE), "
                             "or set compile.nvcc in gpurepro.yaml to the nvcc path")


class ContainerStoppedError(ContainerError):
    """The container stopped (killed, OOM, daemon restart) while a command ran in it."""

    fatal = True

    def __init__(self, container: str, command, state: str):
        InfraError.__init__(
            self, f"container {container} stopped during {command} (killed?): {state}",
            hint=f"see `docker inspect {container}`; start the run again (a stopped container is restarted)",
        )
        self.container = container
        self.command = command
        self.detail = state
        self.state = state


class DaemonGoneError(InfraError):
    """The Docker daemon stopped answering while the tool was using it."""

    fatal = True

    def __init__(self, endpoint: str, detail: str, *, during: str | None = None):
        what = f" during {during}" if during else ""
        super().__init__(f"Docker daemon at {endpoint} stopped answering{what}: {detail}",
                         hint="check that dockerd is running (`docker info`), then start the run again")
        self.endpoint = endpoint
        self.detail = detail


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
