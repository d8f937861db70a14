"""The README's quick start, run as a newcomer would: a stock Debian 12 shell (system python3 with PEP 668's
EXTERNALLY-MANAGED marker, no `python`, no pyenv), the commands exactly as the README prints them."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from projects import ROOT

README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's default for root


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[list[str]]:
    """The fenced blocks of a README section, each as its non-blank lines."""
    return [[line for line in body.splitlines() if line.strip()]
            for body in re.findall(r"^```[\w-]*\n(.*?)^```", text, re.S | re.M)]


def quick_start() -> dict[str, list[str]]:
    """Quick start's blocks: the commands to type, what the first one runs, and the test command."""
    section = readme_section("Quick start")
    blocks = code_blocks(section)
    assert len(blocks) >= 2, "Quick start: expected the commands block and the block of what ./quickstart runs"
    tests = code_blocks(section[section.index("Run the tests"):])
    assert tests, "Quick start: no code block after 'Run the tests'"
    return {"commands": blocks[0], "runs": blocks[1], "tests": tests[0]}


def printed_commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_the_quick_start_is_two_commands_install_and_run_then_test():
    readme = quick_start()
    assert len(readme["commands"]) == 2, readme["commands"]
    script = ROOT / readme["commands"][0].split()[0]
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing or not executable"
    assert readme["commands"][1:] == readme["tests"], "the quick start's second command is the test command"
    assert not any(re.match(r"(python|pip|invoke)\b", line) for line in readme["commands"] + readme["tests"]), \
        "stock Debian has no `python`, and `pip`/`invoke` would be the system's: use the venv's"


def test_ci_runs_the_readme_test_command():
    (command,) = quick_start()["tests"]
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert any(line == command or line.startswith(command + " ") for line in lines), \
        f".ci/run does not run the README's test command `{command}`"


def test_dry_run_prints_the_commands_the_readme_lists():
    readme = quick_start()
    done = subprocess.run(["bash", "-c", f"{readme['commands'][0]} --dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert printed_commands(done.stdout) == readme["runs"]


def test_unknown_option_is_one_line_and_exit_2():
    done = subprocess.run([str(ROOT / "quickstart"), "--no-rn"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--no-run" in done.stderr


def test_without_python3_venv_it_says_the_apt_command(tmp_path):
    """Debian ships ensurepip in python3-venv; without it `python3 -m venv` makes a venv with no pip."""
    shutil.copy2(ROOT / "quickstart", tmp_path / "quickstart")
    hide = tmp_path / "hide"
    (hide / "ensurepip").mkdir(parents=True)
    (hide / "ensurepip" / "__init__.py").write_text("raise ImportError('ensurepip removed, as Debian does')\n")
    env = dict(os.environ, PYTHONPATH=str(hide))
    done = subprocess.run([str(tmp_path / "quickstart"), "--no-run"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "apt-get install python3-venv" in done.stderr
    assert not (tmp_path / ".venv").exists()


def debian_python_skip_reason() -> str | None:
    """Why this machine cannot stand in for stock Debian 12's shell, or None when it can."""
    python3 = shutil.which("python3", path=STOCK_PATH)
    if python3 is None:
        return "no python3 on the stock PATH"
    probe = subprocess.run([python3, "-c", "import os, sysconfig, sys; "
                            "print(os.path.join(sysconfig.get_paths()['stdlib'], 'EXTERNALLY-MANAGED')); "
                            "print(sys.version_info >= (3, 11))"],
                           capture_output=True, text=True, env={"PATH": STOCK_PATH}, timeout=60)
    marker, recent = probe.stdout.split()
    if not os.path.exists(marker):
        return f"{python3} is not an externally managed system python (no {marker})"
    if recent != "True":
        return f"{python3} is older than 3.11"
    if shutil.which("python", path=STOCK_PATH):
        return "`python` is on the stock PATH here (python-is-python3?): not the stock Debian shell"
    if subprocess.run([python3, "-c", "import ensurepip"], capture_output=True, timeout=60).returncode:
        return "python3-venv not installed (the apt hint is tested by test_without_python3_venv_...)"
    return None


def copy_of_the_repo(dest: pathlib.Path) -> pathlib.Path:
    """The working tree's tracked and new files (ignored ones left out), as a fresh clone would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree stays out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def stock_env(home: pathlib.Path) -> dict[str, str]:
    """What `env -i` leaves plus HOME; GPUREPRO_QUICKSTART_WHEELS points pip at a local wheel directory."""
    env = {"PATH": STOCK_PATH, "HOME": str(home)}
    wheels = os.environ.get("GPUREPRO_QUICKSTART_WHEELS")
    if wheels:
        env.update(PIP_FIND_LINKS=wheels, PIP_NO_INDEX="1")
    return env


def test_install_in_a_stock_debian_shell(tmp_path):
    reason = debian_python_skip_reason()
    if reason:
        pytest.skip(reason)
    readme = quick_start()
    repo = copy_of_the_repo(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = stock_env(home)
    # the README's first command, verbatim, in a shell where `python` does not exist
    shell = f'if command -v python; then echo "python is on PATH" >&2; exit 97; fi\n{readme["commands"][0]} --no-run'
    done = subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in env.items()], "bash", "-c", shell], cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert printed_commands(done.stdout) == readme["runs"][:2]

    venv = repo / ".venv"
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert cfg["home"] == "/usr/bin", "the venv is made from Debian's python3"
    listed = subprocess.run([str(venv / "bin" / "invoke"), "--list"], cwd=repo, capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and "repro" in listed.stdout and "image.build" in listed.stdout, listed.stderr
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import gpurepro, pytest; print(gpurepro.__file__)"],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert imported.returncode == 0 and imported.stdout.startswith(str(repo)), imported.stdout + imported.stderr

    # a second run reuses the venv
    again = subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in env.items()], "bash", "-c",
                            f"{readme['commands'][0]} --no-run"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert printed_commands(again.stdout) == readme["runs"][1:2]
