"""The two front ends are one command table: every Invoke task is `python -m gpurepro <task name>` with the
same options and help, and usage errors exit 2 with one line in both."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from gpurepro.cli import LEGACY, build_parser, commands, task_arguments
from gpurepro.commands import ns
from projects import ROOT


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_task_is_a_command_with_the_same_name():
    names = set(commands())
    for full in ns.task_names:
        collection, _, task = full.partition(".")
        default = task and ns.collections[collection].default == task
        assert (collection if default else full) in names, full
    assert set(LEGACY.values()) <= names | {"repro.list"}


@pytest.mark.parametrize("name", sorted(commands()))
def test_same_options_defaults_and_help(name):
    task = commands()[name]
    parser = subparsers()[name]
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    documented = {k.rstrip("_").replace("_", "-") for k in task.help}
    for arg in task_arguments(task):
        dest = arg.name.replace("-", "_")
        if arg.name in documented:
            assert arg.help, f"{name}: --{arg.name} lost its help"
        assert dest in actions, f"{name}: --{arg.name} missing from python -m gpurepro"
        action = actions.pop(dest)
        assert action.help == arg.help
        if not arg.positional:
            assert set(action.option_strings) == {("-" if len(n) == 1 else "--") + n for n in arg.names}
            if arg.kind is not bool and arg.kind is not list:
                assert action.default == arg.default
    assert not actions, f"{name}: options only python -m gpurepro has: {sorted(actions)}"
    assert parser.description == (task.__doc__ or task.body.__doc__).strip()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [
    ["repro"],                      # no step
    ["repro", "step06", "step13"],  # several steps without commas
    ["bisect", "--no-such-flag"],
    ["repro", "--jobs", "abc", "step01"],
    ["repro", "--jobs", "-1", "step01"],
    ["repro", "--arch", "sm_999", "step01"],
])
def test_invoke_usage_errors_exit_2_in_one_line(args):
    done = run(sys.executable, "-m", "invoke", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpurepro: ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["repro", "--jobs", "abc", "step01"], ["repro", "--arch", "sm_999", "step01"],
                                  ["no.such.command"], ["bundle.verify", "--no-such-flag", "x"]])
def test_module_usage_errors_exit_2(args):
    done = run(sys.executable, "-m", "gpurepro", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_several_steps_space_separated_reach_the_task(monkeypatch):
    from gpurepro import app, cli

    seen = {}
    monkeypatch.setattr(app, "repro", lambda steps, **kw: seen.update(steps=steps, **kw) or 0)
    assert cli.main(["repro", "step06", "step13", "--compile-only", "--jobs", "2"]) == 0
    assert seen["steps"] == "step06,step13" and seen["compile_only"] is True and seen["jobs"] == "2"
