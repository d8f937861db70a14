"""RunRecord: run.json's one owner. Schemas match the dataclasses; old records read; unknown keys survive."""
from __future__ import annotations

import dataclasses
import json

import pytest

from gpurepro.outcomes import Outcome, StepResult, Verdict
from gpurepro.run.record import FORMAT_VERSION, SCHEMA_DIR, KernelsInfo, RunRecord, StepSummary, validate


def schema(kind: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())


def test_run_schema_names_exactly_the_record_fields():
    fields = {f.name for f in dataclasses.fields(RunRecord)} - {"extra"}
    run = schema("run")
    assert set(run["properties"]) == fields
    assert set(run["properties"]["steps"]["items"]["properties"]) == {f.name for f in dataclasses.fields(StepSummary)}
    assert set(run["properties"]["kernels"]["properties"]) == {f.name for f in dataclasses.fields(KernelsInfo)}
    assert run["properties"]["format_version"]["const"] == FORMAT_VERSION


def test_result_schema_names_exactly_the_step_result_fields():
    assert set(schema("result")["properties"]) == {f.name for f in dataclasses.fields(StepResult)}
    assert set(schema("result")["$defs"]["outcome"]["enum"]) == {o.value for o in Outcome}
    assert set(schema("result")["$defs"]["verdict"]["enum"]) == {v.value for v in Verdict}


def a_record() -> RunRecord:
    return RunRecord(run_id="20261202T101010Z-abcdef", started_at="2026-12-02T10:10:10+00:00", command=["invoke"],
                     backend="docker", host={"hostname": "h"}, git={"commit": "a" * 40, "dirty": False},
                     steps=[StepSummary("step01", "sm_120a", "skipped", "no GPU", "skipped", "match")])


def test_record_round_trips_and_validates(tmp_path):
    record = a_record()
    record.write(tmp_path)
    data = json.loads((tmp_path / "run.json").read_text())
    validate("run", data)
    back = RunRecord.read(tmp_path)
    assert back == record and back.steps[0].verdict == "match" and back.hostname == "h"
    assert "kernels" not in data  # a repro run has no kernels section


def test_old_records_read_with_defaults_and_unknown_keys_are_kept(tmp_path):
    old = {"run_id": "20261101T000000Z-000000", "status": "complete", "backend": "host", "steps": [
        {"step": "s", "arch": "sm_90a", "outcome": "pass", "reason": "ok", "expected": "pass", "verdict": "match",
         "patches": []}], "environment": None, "added_by_a_newer_tool": {"x": 1}}
    record = RunRecord.from_json(old)
    assert record.format_version == 1 and record.kind == "repro" and record.environment == {}
    assert record.steps[0].cache is None
    assert record.to_json()["added_by_a_newer_tool"] == {"x": 1}
    kernels = RunRecord.from_json({"run_id": "r", "kernels": {"counts": {"passed": 3}, "files": {}}})
    assert kernels.kind == "kernels" and kernels.kernels.counts == {"passed": 3}


def test_not_a_record_is_refused():
    with pytest.raises(ValueError, match="no run_id"):
        RunRecord.from_json({"status": "complete"})


def test_a_record_that_drifts_from_its_schema_is_caught():
    data = a_record().to_json()
    data["steps"][0]["verdict"] = "sort of"
    with pytest.raises(ValueError, match="steps/0/verdict"):
        validate("run", data)
    data = a_record().to_json()
    data["status"] = "done"
    with pytest.raises(ValueError, match="status"):
        validate("run", data)
