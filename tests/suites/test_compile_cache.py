"""The action cache in the repro suite (fake runner): a hit runs no compiler, each key input matters, failures
are cached with their evidence, corrupt entries are recompiled, --no-cache compiles and rewrites."""
from __future__ import annotations

import json

import pytest

from fake_runner import STEPS, FakeRunner
from gpurepro.cache import ActionCache
from gpurepro.config import load_config
from gpurepro.errors import InterruptedRun
from gpurepro.render.console import Console
from gpurepro.run import RunRecord
from gpurepro.suites.repro import RunRequest, execute, expected_from_notes
from projects import make_project

IMAGE = "sha256:" + "1" * 64


@pytest.fixture
def config(tmp_path):
    return load_config(make_project(tmp_path, steps=STEPS).config_path, env={})


def run(config, runner, steps=("hello", "broken"), **kw):
    return execute(config, RunRequest(steps=list(steps), argv=["invoke", "repro"], **kw), console=Console(),
                   runner=runner)


def nvcc_calls(runner) -> int:
    return sum(1 for call in runner.calls if call[0] == "nvcc")


def cache_of(outcome) -> dict:
    return {r.step: r.cache["status"] for r in outcome.results}


def test_second_run_is_all_hits_and_runs_no_compiler(config):
    first = FakeRunner(image_id=IMAGE, compile_output="")
    one = run(config, first)
    assert cache_of(one) == {"hello": "miss", "broken": "miss"} and nvcc_calls(first) == 2
    again = FakeRunner(image_id=IMAGE)
    two = run(config, again)
    assert cache_of(two) == {"hello": "hit", "broken": "hit"}
    assert nvcc_calls(again) == 0
    assert [r.outcome for r in two.results] == [r.outcome for r in one.results]
    # the cached binary went into the runner (with the batch of hits) and was checked and run as usual
    assert again.files["/work/" + two.run.run_id + "/hits/hello/hello"] == b"\x7fELF"
    record = RunRecord.read(two.run.path)
    assert [s.cache["status"] for s in record.steps] == ["hit", "hit"]
    assert "| hit |" in (two.run.path / "summary.md").read_text()
    assert "compile cache: hit" in (two.run.path / "junit.xml").read_text()


def test_cached_compile_error_replays_its_evidence(config):
    broken = FakeRunner(image_id=IMAGE, compile_code=1,
                        compile_output='x.cu(3): error: static assertion failed with "Incorrect SfVectorSize"')
    first = run(config, broken, steps=("broken",)).results[0]
    again = FakeRunner(image_id=IMAGE)  # would compile fine: the cached failure must win
    second = run(config, again, steps=("broken",)).results[0]
    assert (second.outcome, second.reason, second.cache["status"]) == (first.outcome, first.reason, "hit")
    assert nvcc_calls(again) == 0
    log = (config.reports_dir / "latest" / "steps" / "broken" / "compile.log").read_text()
    assert "Incorrect SfVectorSize" in log


@pytest.mark.parametrize("change", ["source", "common", "image", "flags"])
def test_each_key_input_changes_the_key(config, change):
    run(config, FakeRunner(image_id=IMAGE), steps=("hello",))
    image = IMAGE
    if change == "source":
        (config.repros_dir / "hello.cu").write_text("// edited\n")
    elif change == "common":
        (config.repros_dir / "common").mkdir(exist_ok=True)
        (config.repros_dir / "common" / "repro.h").write_text("// a shared header changed\n")
    elif change == "image":
        image = "sha256:" + "2" * 64
    elif change == "flags":
        import dataclasses

        config = dataclasses.replace(config, compile=dataclasses.replace(config.compile,
                                                                         flags=[*config.compile.flags, "-DX=1"]))
    again = FakeRunner(image_id=image)
    assert cache_of(run(config, again, steps=("hello",))) == {"hello": "miss"} and nvcc_calls(again) == 1


def test_an_unrelated_file_keeps_the_hit(config):
    run(config, FakeRunner(image_id=IMAGE), steps=("hello",))
    (config.repros_dir / "broken.cu").write_text("// another step's source\n")
    (config.repros_dir / "manifest.yaml").write_text((config.repros_dir / "manifest.yaml").read_text() + "\n# note\n")
    assert cache_of(run(config, FakeRunner(image_id=IMAGE), steps=("hello",))) == {"hello": "hit"}


def test_corrupt_entry_is_a_miss_and_is_rewritten(config):
    one = run(config, FakeRunner(image_id=IMAGE), steps=("hello",))
    key = one.results[0].cache["key"]
    cache = ActionCache(config.cache.dir)
    binary = cache.entry_path(key) / "binary"
    binary.write_bytes(b"\x00" + binary.read_bytes()[1:])  # one flipped byte
    again = FakeRunner(image_id=IMAGE)
    assert cache_of(run(config, again, steps=("hello",))) == {"hello": "miss"} and nvcc_calls(again) == 1
    assert cache.get(key) is not None and cache.get(key).binary == b"\x7fELF"  # written again, whole


def test_no_cache_compiles_and_rewrites(config):
    run(config, FakeRunner(image_id=IMAGE), steps=("hello",))
    again = FakeRunner(image_id=IMAGE)
    outcome = run(config, again, steps=("hello",), no_cache=True)
    assert cache_of(outcome) == {"hello": "off"} and nvcc_calls(again) == 1
    assert outcome.results[0].cache["key"]  # still keyed: the record says which entry it would be
    assert json.loads((outcome.run.path / "run.json").read_text())["request"]["no_cache"] is True


def test_nothing_to_key_on_compiles_every_time(config):
    runner = FakeRunner()  # no image id, not a host toolchain
    assert cache_of(run(config, runner, steps=("hello",))) == {"hello": "off"}
    again = FakeRunner()
    run(config, again, steps=("hello",))
    assert nvcc_calls(again) == 1


def test_interrupted_or_timed_out_compiles_are_not_cached(config):
    def interrupt(argv):
        return argv[0] == "nvcc"

    interrupt.exc = KeyboardInterrupt()
    with pytest.raises(InterruptedRun):
        run(config, FakeRunner(image_id=IMAGE, fail_on=interrupt), steps=("hello",), jobs=1)
    assert ActionCache(config.cache.dir).stats().entries == 0


def test_a_run_interrupted_on_the_device_keeps_its_compiles(config):
    # with a GPU the device runs come after every compile: Ctrl-C there must not throw the compiles away
    def interrupt(argv):
        return argv[0] == "./hello" and "--preflight-only" not in argv

    interrupt.exc = KeyboardInterrupt()
    gpu = "NVIDIA H200, 9.0, 580.00"
    with pytest.raises(InterruptedRun):
        run(config, FakeRunner(image_id=IMAGE, gpu_smi=gpu, fail_on=interrupt), steps=("hello",))
    assert ActionCache(config.cache.dir).stats().entries == 1
    again = FakeRunner(image_id=IMAGE, gpu_smi=gpu)
    outcome = run(config, again, steps=("hello",))
    assert cache_of(outcome) == {"hello": "hit"} and nvcc_calls(again) == 0
    assert outcome.results[0].outcome.value == "pass"


def test_compile_only_judges_the_compile(config):
    outcome = run(config, FakeRunner(image_id=IMAGE), steps=("hello", "broken"), compile_only=True)
    hello, broken = outcome.results
    assert (hello.outcome.value, hello.expected, hello.verdict.value) == ("compiled", "compiled", "match")
    assert hello.expected_key == "compile.sm_90a" and hello.reproduce.endswith("--compile-only")
    assert broken.outcome.value == "compiled" and broken.verdict.value == "departed"  # manifest: compile_error


def test_expected_time_from_the_manifest_notes():
    assert expected_from_notes("Compile ~92-129 s, 5.4 GB.") == 129
    assert expected_from_notes("sm_121a ok in 168 s, peak RSS 5.4 GB") == 168
    assert expected_from_notes("no figures here") is None
