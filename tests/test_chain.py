
import pytest

from gpurepro.chain import (GIT_BAD, GIT_GOOD, GIT_SKIP, changed_lines, diff_layouts, find_layouts, flip_table,
                            git_bisect_code, record_expectations, step_diff)
from gpurepro.errors import BadInputError, ManifestError
from gpurepro.manifest import load_manifest
from gpurepro.outcomes import Outcome, StepResult, Verdict

MANIFEST = """version: 1
steps:
  # the baseline
  - id: a
    file: a.cu
    parent: null
    change: "baseline"
    targets: [sm_120a, sm_121a]
    compile: {sm_120a: ok, sm_121a: unknown}
    expect: {sm_121: pass, sm_90: skipped}   # measured on GB10
  - id: b
    file: b.cu
    parent: a
    change: "int64 problem shape"
    targets: [sm_120a]
    expect: {sm_121: unknown}
  - id: c
    file: c.cu
    parent: b
    change: "template SF vector size"
    targets: [sm_120a]
    expect: {sm_121: unknown}
"""


@pytest.fixture
def manifest(tmp_path):
    (tmp_path / "a.cu").write_text("int main() {\n  using Index = int;\n  return 0;\n}\n")
    (tmp_path / "b.cu").write_text("int main() {\n  using Index = long;\n  return 0;\n}\n")
    (tmp_path / "c.cu").write_text("int main() {\n  using Index = long;\n  return 0;\n}\n")
    (tmp_path / "manifest.yaml").write_text(MANIFEST)
    return load_manifest(tmp_path / "manifest.yaml")


def result(step, outcome, verdict=Verdict.NEW, device="sm_121", arch="sm_120a", expected=None):
    return StepResult(step, arch, outcome, "r", verdict=verdict, device_arch=device, expected=expected)


def test_step_diff_is_the_one_change(manifest):
    diff = step_diff(manifest, manifest.get("b"))
    assert "-  using Index = int;" in diff and "+  using Index = long;" in diff
    assert diff.startswith("--- repros/a.cu\n+++ repros/b.cu")
    assert changed_lines(diff) == 2
    with pytest.raises(BadInputError, match="no parent"):
        step_diff(manifest, manifest.get("a"))


def test_flip_table_names_the_first_flip(manifest):
    results = [result("a", Outcome.PASS), result("b", Outcome.INIT_ERROR), result("c", Outcome.INIT_ERROR)]
    rows, first = flip_table(manifest.chain("a", "c"), results)
    assert [r.flipped for r in rows] == [False, True, False]
    assert first.step == "b" and first.observed == "init_error" and first.change == "int64 problem shape"
    rows, first = flip_table(manifest.chain("a", "c"), [result(s, Outcome.PASS) for s in "abc"])
    assert first is None


@pytest.mark.parametrize("outcomes, expected, code", [
    ([(Outcome.PASS, Verdict.MATCH)], None, GIT_GOOD),
    ([(Outcome.PASS, Verdict.MATCH), (Outcome.INIT_ERROR, Verdict.DEPARTED)], None, GIT_BAD),
    ([(Outcome.INFRA_ERROR, Verdict.INFRA)], None, GIT_SKIP),
    ([(Outcome.SKIPPED, Verdict.NOT_RUN)], None, GIT_SKIP),
    ([(Outcome.COMPILE_ERROR, Verdict.DEPARTED)], "compiles", GIT_SKIP),
    ([(Outcome.COMPILE_ERROR, Verdict.MATCH)], "compile_error", GIT_GOOD),
])
def test_git_bisect_codes(outcomes, expected, code):
    results = [result(f"s{i}", o, v, expected=expected) for i, (o, v) in enumerate(outcomes)]
    assert git_bisect_code(results) == code


def test_layout_diff_names_fields_and_bytes():
    a = [{"event": "layout", "name": "layout_SFA", "type": "Layout<...>", "size": 4, "bytes_hex": "00010203"},
         {"event": "layout", "name": "stride_B", "type": "S", "size": 2, "bytes_hex": "0a0b"},
         {"event": "layout", "name": "only_a", "type": "T", "bytes_hex": ""}]
    b = [{"event": "layout", "name": "layout_SFA", "type": "Layout<...>", "size": 4, "bytes_hex": "00ff0203"},
         {"event": "layout", "name": "stride_B", "type": "S", "size": 2, "bytes_hex": "0a0b"}]
    rows = {r.name: r for r in diff_layouts(a, b)}
    assert rows["layout_SFA"].status == "differs" and rows["layout_SFA"].fields == ["bytes"]
    assert rows["layout_SFA"].first_offsets == [1]
    assert rows["stride_B"].status == "same"
    assert rows["only_a"].status == "only in A"
    b[1]["type"] = "S2"
    assert {r.name: r for r in diff_layouts(a, b)}["stride_B"].fields == ["type"]


def test_find_layouts_prefers_latest(tmp_path):
    for run in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"):
        (tmp_path / run / "steps" / "step20").mkdir(parents=True)
        (tmp_path / run / "steps" / "step20" / "layout.json").write_text(f'[{{"name": "{run}"}}]')
    (tmp_path / "latest").symlink_to("20260101T000000Z-aaaaaa")
    path, records = find_layouts(tmp_path, "step20")
    assert records[0]["name"] == "20260101T000000Z-aaaaaa"
    with pytest.raises(BadInputError, match="no layout.json for step21"):
        find_layouts(tmp_path, "step21")


def test_record_writes_back_and_keeps_comments(manifest):
    results = [result("a", Outcome.INIT_ERROR), result("b", Outcome.PASS),
               result("c", Outcome.COMPILE_ERROR), result("c", Outcome.INFRA_ERROR, Verdict.INFRA)]
    changes = record_expectations(manifest.path, results)
    assert changes == ["a: expect.sm_121: pass -> init_error", "b: expect.sm_121: unknown -> pass",
                       "c: compile.sm_120a: unset -> compile_error", "c: expect.sm_120: unset -> compile_error"]
    text = manifest.path.read_text()
    assert "# the baseline" in text and "# measured on GB10" in text
    again = load_manifest(manifest.path)
    assert again.get("a").expect == {"sm_121": "init_error", "sm_90": "skipped"}
    assert again.get("b").expect["sm_121"] == "pass"
    assert again.get("c").compile == {"sm_120a": "compile_error"}
    assert again.get("c").expect["sm_120"] == "compile_error"  # the device of that arch will see it too


def test_record_without_gpu_records_compile_outcomes(manifest):
    changes = record_expectations(manifest.path, [result("a", Outcome.SKIPPED, Verdict.NOT_RUN, device=None,
                                                         arch="sm_121a")])
    assert changes == ["a: compile.sm_121a: unknown -> ok"]
    assert load_manifest(manifest.path).get("a").compile["sm_121a"] == "ok"


def test_record_refuses_block_mappings(tmp_path, manifest):
    text = manifest.path.read_text().replace("expect: {sm_121: unknown}", "expect:\n      sm_121: unknown", 1)
    manifest.path.write_text(text)
    before = manifest.path.read_text()
    with pytest.raises(ManifestError, match="one-line"):
        record_expectations(manifest.path, [result("b", Outcome.PASS)])
    assert manifest.path.read_text() == before


def test_compile_only_interrupted_and_matrix_results_record_only_what_they_show():
    from gpurepro.chain import recordable
    from gpurepro.outcomes import Outcome, StepResult, Verdict

    compiled = StepResult("s", "sm_120a", Outcome.COMPILED, "compiled", device_arch="sm_90", verdict=Verdict.MATCH)
    assert recordable(compiled) == [("s", "compile.sm_120a", "ok")]  # never expect.sm_90: compiled
    interrupted = StepResult("s", "sm_120a", Outcome.INTERRUPTED, "interrupted", verdict=Verdict.INFRA)
    assert recordable(interrupted) == []
    other = StepResult("s", "sm_120a", Outcome.COMPILE_ERROR, "x", toolchain="cutlass-4.2", verdict=Verdict.NEW)
    assert recordable(other) == []
