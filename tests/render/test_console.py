"""The console without a terminal (CI logs): a line per stage change, heartbeats for busy steps, results at once."""
from __future__ import annotations

import io
import time

from gpurepro.outcomes import Outcome, StepResult, Verdict
from gpurepro.render.console import Console, StepLine


def test_stage_lines_heartbeats_and_results_as_they_happen(monkeypatch):
    monkeypatch.setenv("GPUREPRO_HEARTBEAT_S", "0.2")
    out = io.StringIO()
    console = Console(out=out, err=io.StringIO())
    with console.steps([StepLine("step01", "sm_120a", expected=95.0), StepLine("step02", "sm_120a")]):
        console.stage("step01", "sm_120a", "compiling")
        time.sleep(0.7)
        text = out.getvalue()
        assert "step01[sm_120a]: compiling (expected ~95 s)" in text
        assert "step01[sm_120a]: still compiling," in text and "elapsed (expected ~95 s)" in text
        assert "step02" not in text  # queued steps are quiet
        console.step_done(StepResult("step01", "sm_120a", Outcome.SKIPPED, "no GPU", verdict=Verdict.MATCH,
                                     compile_seconds=94.5, cache={"status": "miss", "key": "k"}))
        assert "step01[sm_120a]: skipped (match) — no GPU [compile 94.5 s, cache miss]" in out.getvalue()
        seen = out.getvalue()
        time.sleep(0.5)
        assert out.getvalue().count("still compiling") == seen.count("still compiling")  # done: no heartbeat
