"""The repro chain itself (repros/): manifest, files, parents and diffs, protocol records, patches. No compiling."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from gpurepro.chain import changed_lines, step_diff
from gpurepro.manifest import load_manifest
from projects import ROOT

REPROS = ROOT / "repros"
SEED = ROOT.parent / "shared" / "seeds" / "000_7b58d71312119728.txt"
SM12X_TARGETS = ("sm_120a", "sm_121a")

# What the seed states about SM121 (the rest is a hypothesis there, so `unknown`):
# step00 "known-working"; step01 "Error Internal on SM121"; step14 "succeeds" (step15's text);
# step15 and step20 "(FAIL)"; step21 "(SUCCESS)".
SEED_SM121 = {"step00": "pass", "step01": "init_error", "step14": "pass", "step21": "pass",
              "step15": "init_error", "step20": "init_error"}

# Diff size limits against the parent, in changed lines (+/-). A one-change step edits its header comment,
# its step id and a few code lines; the debug-dump pair adds one block of layout records and asserts.
MAX_CHANGED = 30
MAX_CHANGED_DUMPS = 50
DUMP_STEPS = {"step20", "step21"}
# The seed's two baselines are whole programs (step01 is a new kernel, not an edit of step00).
BASELINES = {"step00", "step01"}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(REPROS / "manifest.yaml")


@pytest.fixture(scope="module")
def seed_steps() -> dict[str, tuple[str, str]]:
    """step id -> (file name, description) as the seed lists them."""
    if not SEED.is_file():
        pytest.skip(f"seed not present ({SEED}): only the shared checkout has it")
    text = SEED.read_text()
    entries = re.findall(r"^- `((step\d+)_[A-Za-z0-9_]+\.cu)`\n((?:  .*\n|\n(?=  ))*)", text, re.M)
    assert len(entries) >= 20, "the seed's step list could not be parsed"
    return {step: (file, " ".join(desc.replace("\n  - ", " ").split()).removeprefix("- ")) for file, step, desc in entries}


def sm12x_steps(manifest):
    return [s for s in manifest.steps.values() if s.id.startswith("step")]


def code_of(text: str) -> str:
    """Source without comments, blank lines and the step-id line: what a step changes in code."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'static const char\* kStepId = "step\d+";', "", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def test_every_seed_step_is_in_the_manifest_under_the_seeds_file_name(manifest, seed_steps):
    for step_id, (file, _) in seed_steps.items():
        assert step_id in manifest.steps, f"{step_id} ({file}) missing from the manifest"
        assert manifest.steps[step_id].file == file
        assert (REPROS / file).is_file()
    # nothing beyond the seed's chain, apart from the SM90 control
    assert set(manifest.steps) - set(seed_steps) == {"sm90_control"}


def test_parents_follow_the_seed(manifest, seed_steps):
    """Where the seed says what a step starts from ("Like step01", "Copy of step15", ...), that is its parent."""
    named = 0
    for step_id, (_, desc) in seed_steps.items():
        base = re.match(r"(?:Like|Same as|Copy of|Starts from) (step\d+)", desc)
        if base:
            named += 1
            assert manifest.steps[step_id].parent == base.group(1), step_id
    assert named >= 12
    for step in sm12x_steps(manifest):
        if step.id != "step00":
            assert step.parent in manifest.steps, step.id


def test_each_step_is_its_parent_plus_one_small_code_change(manifest):
    for step in sm12x_steps(manifest):
        if step.id in BASELINES:
            continue
        diff = step_diff(manifest, step)
        limit = MAX_CHANGED_DUMPS if step.id in DUMP_STEPS else MAX_CHANGED
        assert 0 < changed_lines(diff) <= limit, f"{step.id} vs {step.parent}: {changed_lines(diff)} lines\n{diff}"
        parent_code = code_of(manifest.source(manifest.get(step.parent)).read_text())
        assert code_of(manifest.source(step).read_text()) != parent_code, f"{step.id} changes only comments"


def test_sources_name_themselves(manifest):
    for step in sm12x_steps(manifest):
        text = manifest.source(step).read_text()
        assert text.startswith(f"// {step.file} - "), step.id
        assert re.search(rf'static const char\* kStepId = "{step.id}";', text), step.id


def test_host_records_come_before_the_first_cuda_call(manifest):
    """config + preflight (and layout dumps) are printed, and --preflight-only returns, before any CUDA API call."""
    cuda_call = re.compile(r"\bcuda[A-Z]\w*\(|device_info\(|\.upload\(|\.alloc|query_device_multiprocessor_count")
    for step in sm12x_steps(manifest):
        # comments blanked out, offsets kept
        text = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), manifest.source(step).read_text())
        stop = text.find("if (args.preflight_only)")
        assert stop > 0, f"{step.id}: no --preflight-only exit"
        config = text.find('repro::event("config")')
        preflight = text.find("repro::preflight(")
        assert 0 < config < stop and 0 < preflight < stop, step.id
        assert "sm120_smem_capacity_bytes" in text[preflight:stop], f"{step.id}: preflight not against the SM120 capacity"
        for key in ('"schedule"', '"tile"', '"stages"', '"sf_vector_size"', '"problem_shape_index"'):
            assert key in text[config:stop], f"{step.id}: config lacks {key}"
        assert cuda_call.search(text, stop), f"{step.id}: no CUDA call after the preflight exit"
        assert not cuda_call.search(text, 0, stop), f"{step.id}: a CUDA call before the preflight exit"


def test_cutlass_stages_report_status_with_the_cuda_error(manifest):
    for step in sm12x_steps(manifest):
        text = manifest.source(step).read_text()
        assert "repro::status(" in text and "last_cuda_error()" in text, step.id
        for stage in ("can_implement", "get_workspace_size", "initialize", "run"):
            assert f'"{stage}"' in text, f"{step.id}: no status record for {stage}"
        assert "repro::emit_check(" in text, f"{step.id}: no check against the host reference"


def test_targets_and_expectations(manifest, seed_steps):
    for step in sm12x_steps(manifest):
        assert step.targets == SM12X_TARGETS, step.id
        assert set(step.compile) == set(SM12X_TARGETS), step.id
        assert step.expect.get("sm_90") == "skipped", step.id
        assert set(step.expect) == {"sm_90", "sm_120", "sm_121"}, step.id
        if "compile_error" in step.compile.values():
            # a step that cannot be built: the device expectations say so, and the notes quote why
            assert step.expect["sm_120"] == step.expect["sm_121"] == "compile_error", step.id
            assert "static_assert" in step.notes or "error" in step.notes, step.id
        else:
            assert step.expect["sm_121"] == SEED_SM121.get(step.id, "unknown"), step.id
            assert step.expect["sm_120"] in ("unknown", "compile_error"), step.id


def test_layout_dump_steps_dump_the_same_names_before_preflight_exit(manifest):
    blocks = {}
    for step_id in DUMP_STEPS:
        text = manifest.source(manifest.get(step_id)).read_text()
        stop = text.index("if (args.preflight_only)")
        names = re.findall(r'repro::layout\("(\w+)"', text)
        assert names and all(text.index(f'repro::layout("{n}"') < stop for n in names), step_id
        asserted = set(re.findall(r"static_assert\(std::is_trivially_copyable_v<(\w+)>", text))
        assert {"LayoutSFA", "LayoutSFB", "StrideA", "StrideB"} <= asserted, step_id
        blocks[step_id] = text[text.index("// ---- layout dumps"):stop]
    # byte-comparable only if both programs dump with the very same code
    assert blocks["step20"] == blocks["step21"]


def test_patched_steps_name_existing_unified_diffs(manifest):
    patched = [s for s in manifest.steps.values() if s.patches]
    assert {s.id for s in patched} >= {"step10", "step11", "step12"}
    for step in patched:
        text = manifest.source(step).read_text()
        assert "Mxf8f6f4Sm120<" in text, step.id
        for patch in step.patches:
            body = (REPROS / "patches" / patch).read_text()
            paths = re.findall(r"^\+\+\+ b/(\S+)", body, re.M)
            assert paths and all(p.startswith("include/cutlass/") for p in paths), patch
            assert re.findall(r"^--- a/(\S+)", body, re.M) == paths, patch


def _cutlass_include() -> pathlib.Path | None:
    root = pathlib.Path(os.environ.get("GPUREPRO_FLASHINFER", "~/.cache/gpurepro/flashinfer")).expanduser()
    include = root / "3rdparty" / "cutlass" / "include"
    return include if (include / "cutlass" / "gemm" / "dispatch_policy.hpp").is_file() else None


def test_patches_apply_to_the_pinned_cutlass_and_add_the_tags(manifest, tmp_path):
    include = _cutlass_include()
    if include is None or shutil.which("patch") is None:
        pytest.skip("no CUTLASS headers laid out (`invoke toolchain.headers`) or no `patch`")
    tree = tmp_path / "cutlass-patched"
    (tree / "include" / "cutlass" / "gemm").mkdir(parents=True)
    for rel in ("cutlass/gemm/dispatch_policy.hpp", "cutlass/gemm/collective/builders/sm120_blockscaled_mma_builder.inl"):
        (tree / "include" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(include / rel, tree / "include" / rel)
    for patch in sorted({p for s in manifest.steps.values() for p in s.patches}):
        done = subprocess.run(["patch", "-p1", "--forward", "--batch", "-d", str(tree)],
                              stdin=(REPROS / "patches" / patch).open("rb"), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    policy = (tree / "include/cutlass/gemm/dispatch_policy.hpp").read_text()
    for kind in ("Pingpong", "Cooperative"):
        assert f"struct KernelPtrArrayTmaWarpSpecialized{kind}Mxf8f6f4Sm120 " in policy
        assert f"KernelPtrArrayTmaWarpSpecialized{kind}Mxf8f6f4Sm120" not in (include / "cutlass/gemm/dispatch_policy.hpp").read_text()
