"""index.html: written for every run, self-contained, complete; rendered by a real (headless) Chromium."""
import html
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from fake_runs import H100, FakeRunner, make_run, project_config
from gpurepro import app
from gpurepro.classify import ExecResult
from gpurepro.errors import BadInputError
from gpurepro.render.html import COLOURS, DIFF_ADD_BG, DIFF_DEL_BG, render

LAYOUT = '@@repro {{"event":"layout","name":"sf","type":"int","bytes_hex":"{}"}}'


class MixedRunner(FakeRunner):
    """broken.cu fails to compile (as its static_assert does); each step dumps its own layout bytes."""

    def exec(self, argv, *, workdir, timeout_s, env=None):
        if argv[0] == "nvcc" and "broken.cu" in argv:
            self.calls.append(list(argv))
            return ExecResult(argv, 2, 'broken.cu(3): error: static assertion failed with "bad SF <vector>"\n')
        if argv[-1] == "--preflight-only":
            self.calls.append(list(argv))
            return ExecResult(argv, 0, LAYOUT.format("2a000000" if workdir.endswith("/hello") else "2b000000"))
        return super().exec(argv, workdir=workdir, timeout_s=timeout_s, env=env)


STEPS = [
    {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
    {"id": "plain", "file": "plain.cu", "parent": "hello", "change": "no markers", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "unknown"}},
    {"id": "broken", "file": "broken.cu", "parent": "hello", "change": "SF vector size", "targets": ["sm_120a"],
     "compile": {"sm_120a": "compile_error"}, "expect": {"sm_120": "unknown"}},
]


@pytest.fixture
def config(tmp_path):
    return project_config(tmp_path, steps=STEPS)


@pytest.fixture
def run_dir(config, monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", "planted-gitlab-token-0009")
    return make_run(config, MixedRunner(run_output="<script>alert(1)</script>\n@@repro "
                                                   '{"event":"result","outcome":"pass"}'),
                    steps=("hello", "plain", "broken")).run.path


def test_every_run_gets_a_self_contained_index(run_dir):
    page = (run_dir / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # the browser may fetch nothing, even if something slipped in
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", page, re.I)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:|//)""", page, re.I)  # only relative links


def test_the_page_holds_matrix_expectations_reasons_logs_and_environment(run_dir):
    page = (run_dir / "index.html").read_text()
    # matrix: steps x compile targets, coloured by outcome, the expectation beside each result
    assert '<th>sm_90a</th><th>sm_120a</th>' in page
    assert '<span class="outcome o-skipped">skipped</span>' in page
    assert '<span class="outcome o-compile_error">compile_error</span>' in page
    assert "expected: pass (expect.sm_90)" in page and "expected: compile_error (compile.sm_120a)" in page
    assert "static_assert: bad SF &lt;vector&gt;" in page  # reasons, escaped
    assert '<details class="log"><summary>compile.log' in page and "<pre>$ nvcc" in page  # logs folded
    assert "layout diff vs hello: 1 of 1 differ" in page  # plain's sf bytes against its parent's
    assert "<th>cutlass_version</th><td>4.5.0</td>" in page
    assert "<th>GITLAB_TOKEN</th><td>&lt;redacted&gt;</td>" in page
    assert "planted-gitlab-token-0009" not in page


def test_program_output_cannot_inject_markup(config):
    run = make_run(config, FakeRunner(gpu_smi=H100, run_output="<script>alert(1)</script>"), steps=("hello",))
    page = (run.run.path / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_report_rewrites_index_and_prints_its_path(run_dir, config, capsys):
    (run_dir / "index.html").unlink()
    assert app.report(config=str(config.path)) == 0  # RUN defaults to reports/latest
    assert capsys.readouterr().out.strip() == str(run_dir / "index.html")
    assert f"gpurepro run {run_dir.name}" in (run_dir / "index.html").read_text()


def test_report_of_a_failed_run_without_steps(tmp_path):
    run = tmp_path / "20260101T000000Z-abcdef"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "status": "failed", "steps": [],
                                              "error": "Docker daemon not reachable"}))
    page = render(run)
    assert "no steps recorded" in page and "Docker daemon not reachable" in page


# --- in a real browser -----------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per call
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def png_pixels(data: bytes) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    colours = set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[x:x + 3]) for x in range(0, stride, bpp))
        previous = line
    return {tuple(c) for c in colours}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)")
def test_chromium_renders_the_report(run_dir, tmp_path):
    url = (run_dir / "index.html").as_uri()
    dom = chromium(tmp_path, "--dump-dom", url)
    text = re.sub(r"<[^>]+>", " ", dom)
    text = html.unescape(re.sub(r"\s+", " ", text))
    assert f"gpurepro run {run_dir.name}" in text
    assert "hello baseline skipped not_run expected: pass (expect.sm_90) no GPU" in text
    assert "compile_error match expected: compile_error (compile.sm_120a) static_assert: bad SF <vector>" in text
    assert "layout diff vs hello: 1 of 1 differ" in text
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", url)
    colours = png_pixels(shot.read_bytes())
    for outcome in ("skipped", "compile_error"):  # the matrix is coloured by outcome on screen
        rgb = tuple(bytes.fromhex(COLOURS[outcome][1:]))
        assert rgb in colours, f"no {outcome} colour {COLOURS[outcome]} in the screenshot"


def test_report_of_a_kernels_run(tmp_path):
    run = tmp_path / "20260101T000000Z-abcdef"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "kind": "kernels", "status": "complete", "steps": [],
                                              "kernels": {"counts": {"passed": 7, "failed": 1},
                                                          "failed": [{"test": "test_q.py::test_round", "outcome":
                                                                      "failed", "message": "assert 1 == 2"}]}}))
    page = render(run)
    assert "<th>passed</th><td>7</td>" in page and "test_q.py::test_round" in page and "assert 1 == 2" in page


# --- what changed and why it failed: real-looking runs --------------------------------------------------------
RTX = "NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 12.0, 580.65.06"
GB10 = "NVIDIA GB10, 12.1, 580.95.05"
CUBINS = "ELF file    1: {0}.1.sm_120a.cubin\nELF file    2: {0}.2.sm_121a.cubin"
SOURCE = """// {title}
#include "repro.h"
#include "cutlass/gemm/collective/collective_builder.hpp"

using ElementA = cutlass::mx_float8_t<cutlass::float_e4m3_t>;
using ElementB = {element_b};
using ElementD = cutlass::bfloat16_t;
using TileShape = cute::Shape<cute::_128, cute::_128, cute::_128>;
using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
using BuilderSchedule = {schedule};
using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<{index}, {index}, {index}>>;

template <int SFVectorSize>
int run_grouped(const repro::Args& args) {{
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm120, cutlass::arch::OpClassBlockScaledTensorOp, ElementA, cutlass::layout::RowMajor, 32,
      ElementB, cutlass::layout::ColumnMajor, 32, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAuto, BuilderSchedule>::CollectiveOp;
  repro::preflight("sm_120", sizeof(typename GemmKernel::SharedStorage), cutlass::arch::sm120_smem_capacity_bytes);
  if (args.preflight_only) return 0;
  return repro::run_and_check<Gemm>(args, kShapes);
}}

int main(int argc, char** argv) {{ return run_grouped<32>(repro::parse(argc, argv)); }}
"""
PINGPONG = "cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong"
SHOWCASE = [
    {"id": "step00", "file": "step00.cu", "parent": None, "targets": ["sm_120a", "sm_121a"],
     "change": "baseline: the FP8 groupwise-scaled grouped GEMM FlashInfer ships for SM120",
     "compile": {"sm_120a": "ok", "sm_121a": "ok"}, "expect": {"sm_120": "pass", "sm_121": "pass"},
     "src": dict(title="baseline", element_b="cutlass::float_e4m3_t", schedule="cutlass::gemm::KernelScheduleAuto",
                 index="int")},
    {"id": "step01", "file": "step01.cu", "parent": "step00", "targets": ["sm_120a", "sm_121a"],
     "change": "MXF8 x MXF4 through the SM120 block-scaled builder (ptr-array pingpong, int64_t problem shape)",
     "compile": {"sm_120a": "ok", "sm_121a": "ok"}, "expect": {"sm_120": "pass", "sm_121": "init_error"},
     "src": dict(title="MXF8 x MXF4", element_b="cutlass::mx_float4_t<cutlass::float_e2m1_t>", schedule=PINGPONG,
                 index="int64_t")},
    {"id": "step02", "file": "step02.cu", "parent": "step01", "targets": ["sm_120a", "sm_121a"],
     "change": "B operand mx_float8_t<e4m3> instead of mx_float4_t<e2m1>: is the FP4 operand the trigger?",
     "compile": {"sm_120a": "ok", "sm_121a": "ok"}, "expect": {"sm_120": "unknown", "sm_121": "pass"},
     "src": dict(title="MXF8 x MXF8", element_b="cutlass::mx_float8_t<cutlass::float_e4m3_t>", schedule=PINGPONG,
                 index="int64_t")},
    {"id": "step03", "file": "step03.cu", "parent": "step01", "targets": ["sm_120a"],
     "change": "builder schedule tag KernelScheduleSm120Blockwise instead of the generic ptr-array pingpong",
     "compile": {"sm_120a": "ok"}, "expect": {"sm_120": "unknown"},
     "src": dict(title="blockwise schedule", element_b="cutlass::mx_float4_t<cutlass::float_e2m1_t>",
                 schedule="cutlass::gemm::KernelScheduleSm120Blockwise", index="int64_t")},
]


def events(*records) -> str:
    return "\n".join("@@repro " + json.dumps(r, separators=(",", ":")) for r in records)


def config_event(step, element_b, index="int64_t"):
    return {"event": "config", "step": step, "schedule": "KernelPtrArrayTmaWarpSpecializedPingpongBlockScaledSm120<3>",
            "tile": [128, 128, 128], "cluster": [1, 1, 1], "problem_shape_index": index, "sf_vector_size": 32,
            "stages": 2, "element_a": "mx_float8_t<float_e4m3_t>", "element_b": element_b, "layout": "TN",
            "groups": 3, "shapes_mnk": ["128x256x512", "256x128x512", "64x512x256"], "seed": 2024}


def preflight_event(shared, fits=True):
    return {"event": "preflight", "arch": "sm_120", "shared_storage_bytes": shared, "smem_capacity_bytes": 101376,
            "fits": fits, "detail": {"mainloop_shared_storage_bytes": shared - 4352, "max_threads_per_block": 384}}


DEVICE = {"event": "device", "count": 1, "name": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
          "arch": "sm_120", "sm_count": 188, "smem_per_block_optin": 101376, "driver_version": 13000,
          "runtime_version": 13000}
RUN_OUTPUT = {
    "step00": events(config_event("step00", "float_e4m3_t", "int"), preflight_event(70656), DEVICE,
                     {"event": "status", "stage": "run", "status": "kSuccess", "cuda_error": "cudaSuccess"},
                     {"event": "check", "checked": 74752, "mismatches": 0, "max_abs_err": 0.0078},
                     {"event": "result", "outcome": "pass"}),
    "step01": events(config_event("step01", "mx_float4_t<float_e2m1_t>"), preflight_event(78848), DEVICE,
                     {"event": "status", "stage": "initialize", "status": "kErrorInternal",
                      "cuda_error": "cudaSuccess"}, {"event": "result", "outcome": "init_error"})
    + "\nGemm::initialize() failed: Error Internal\n",
    "step02": events(config_event("step02", "mx_float8_t<float_e4m3_t>"), preflight_event(95232), DEVICE,
                     {"event": "status", "stage": "run", "status": "kSuccess", "cuda_error": "cudaSuccess"},
                     {"event": "check", "checked": 74752, "mismatches": 0, "max_abs_err": 0.0156},
                     {"event": "result", "outcome": "pass"}),
}
RUN_CODES = {"step01": 2}


def cutlass_warnings(repeats: int) -> str:
    """What nvcc prints for CUTLASS headers: #20012-D by the hundred (host and device passes), remarks."""
    places = [("cute/layout.hpp", 140, "Layout"), ("cute/tensor_impl.hpp", 212, "TensorEngine"),
              ("cutlass/array.h", 433, "Array"), ("cute/pointer.hpp", 97, "gmem_ptr")]
    out = []
    for i in range(repeats):
        path, line, name = places[i % len(places)]
        out += [f"/workspace/flashinfer/3rdparty/cutlass/include/{path}({line}): warning #20012-D: __device__ "
                f'annotation is ignored on a function("{name}") that is explicitly defaulted on its first declaration',
                f"    {name}() = default;", "    ^", "",
                'Remark: The warnings can be suppressed with "-diag-suppress <warning-number>"', ""]
    return "\n".join(out)


STATIC_ASSERT = """/workspace/flashinfer/3rdparty/cutlass/include/cutlass/gemm/collective/builders/sm120_blockscaled_mma_builder.inl(164): error: static assertion failed with "Could not build a collective for given parameters."
      static_assert(cutlass::detail::dependent_false<KernelScheduleType>, "Could not build a collective for given parameters.");
      ^
          detected during instantiation of "int run_grouped<SFVectorSize>(const repro::Args &) [with SFVectorSize=32]" at line 26 of step03.cu
"""


class ShowcaseRunner(FakeRunner):
    """Per-step program output; step03 fails to compile under hundreds of CUTLASS warnings."""

    def __init__(self, gpu_smi=RTX, run_output=None, run_codes=None, compile_error_steps=("step03",)):
        super().__init__(gpu_smi=gpu_smi)
        self.outputs = {**RUN_OUTPUT, **(run_output or {})}
        self.codes = {**RUN_CODES, **(run_codes or {})}
        self.compile_error_steps = compile_error_steps

    def exec(self, argv, *, workdir, timeout_s, env=None):
        step = workdir.rsplit("/", 1)[-1]
        if argv[0] == "nvcc":
            self.calls.append(list(argv))
            if step in self.compile_error_steps:
                log = cutlass_warnings(180) + "\n" + STATIC_ASSERT + f'\n1 error detected in the compilation of "{step}.cu".\n'
                return ExecResult(argv, 2, log, seconds=23.4)
            self.files[f"{workdir}/{step}"] = b"\x7fELF"
            return ExecResult(argv, 0, cutlass_warnings(24), seconds=92.0 + len(self.calls))
        if argv[0] == "cuobjdump":
            self.calls.append(list(argv))
            return ExecResult(argv, 0, CUBINS.format(step))
        if argv[0].startswith("./") and len(argv) == 1:
            self.calls.append(list(argv))
            return ExecResult(argv, self.codes.get(step, 0), self.outputs.get(step, ""), seconds=1.8)
        return super().exec(argv, workdir=workdir, timeout_s=timeout_s, env=env)


@pytest.fixture
def showcase(tmp_path):
    """A project with a four-step chain whose sources differ the way bisection steps do."""
    config = project_config(tmp_path, steps=[{k: v for k, v in s.items() if k != "src"} for s in SHOWCASE])
    root = pathlib.Path(config.manifest).parent
    for s in SHOWCASE:
        (root / s["file"]).write_text(SOURCE.format(**s["src"]))
    return config


def showcase_run(config, steps=("step00", "step01", "step02"), runner=None):
    return make_run(config, runner or ShowcaseRunner(), steps=steps, arch="sm_120a").run.path


def section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    return page[start:page.index("</div></details>", start)]


def test_a_departed_step_is_open_with_its_change_diff_and_records(showcase):
    run = showcase_run(showcase)
    page = (run / "index.html").read_text()
    departed = section(page, "step-step01-sm_120a")
    assert page[page.rindex("<details", 0, page.index('id="step-step01-sm_120a"')):].startswith(
        '<details id="step-step01-sm_120a" class="step s-departed" open>')
    assert "<b>change:</b> MXF8 x MXF4 through the SM120 block-scaled builder" in departed
    assert "(parent: step00)" in departed
    # the diff of the copies this run compiled, coloured, open
    assert '<details class="srcdiff" open><summary>source diff vs step00:' in departed
    assert "from the copies in this run directory (what was compiled)" in departed
    assert '<span class="d-del">-using ElementB = cutlass::float_e4m3_t;</span>' in departed
    assert ('<span class="d-add">+using ElementB = cutlass::mx_float4_t&lt;cutlass::float_e2m1_t&gt;;</span>'
            in departed)
    # records as tables, not JSON
    assert '<tr><th colspan="2">config</th></tr>' in departed and "<tr><th>stages</th><td>2</td></tr>" in departed
    assert "<tr><th>shapes_mnk</th><td>128x256x512, 256x128x512, 64x512x256</td></tr>" in departed
    assert "<tr><th>status</th><td class=bad>kErrorInternal</td></tr>" in departed
    assert '"event":"config"' not in departed.split("run.log")[0]  # raw JSON only inside the log itself
    # the calm steps stay folded
    assert '<details id="step-step00-sm_120a" class="step s-calm">' in page
    assert '<details id="step-step02-sm_120a" class="step s-calm">' in page
    assert "needs a look: <a href=\"#step-step01-sm_120a\">step01[sm_120a]</a> (init_error, departed)" in page


def test_facts_leave_out_what_is_absent(showcase):
    from gpurepro.render.html import facts_line

    assert facts_line({"expected": "pass", "compile_seconds": 317.586}) == "expected <b>pass</b>; no GPU; compile 317.6 s"
    full = facts_line({"expected": "pass", "expected_key": "expect.sm_120", "device_arch": "sm_120",
                       "compile_seconds": 92.0, "run_seconds": 0.25, "exit_code": 0, "signal": None})
    assert full == "expected <b>pass</b> (expect.sm_120); device sm_120; compile 92.0 s; run 0.25 s; exit 0"
    page = (showcase_run(showcase, steps=("step03",)) / "index.html").read_text()
    facts = re.search(r'<p class="facts">(.*?)</p>', section(page, "step-step03-sm_120a")).group(1)
    assert facts.startswith("expected <b>compiled</b> (compile.sm_120a); device sm_120; compile 23.4 s")
    assert "run " not in facts and "exit" not in facts  # a compile error has neither
    assert not re.search(r"\brun\s+s\b|\bexit\s*[;<]|\bNone\b", page)


def test_a_damaged_result_json_still_renders(run_dir):
    (run_dir / "steps" / "hello" / "result.json").write_text(json.dumps({
        "step": "hello", "arch": "sm_90a", "events": 5, "compile_seconds": "soon", "patches": [1, "x"],
        "cache": "hit", "exit_code": None, "reason": "<b>bold</b>"}))
    (run_dir / "steps" / "plain" / "result.json").write_text("{not json")
    page = render(run_dir)
    hello = section(page, "step-hello-sm_90a")
    assert "soon" not in hello and "CUTLASS patches" not in hello and "<b>bold</b>" not in page


def test_compile_log_folds_repeated_warnings_and_puts_the_first_error_on_top(showcase):
    page = (showcase_run(showcase, steps=("step03",)) / "index.html").read_text()
    step = section(page, "step-step03-sm_120a")
    log = step[step.index('<details class="log" open>'):]
    assert "first error at line" in log and "repeated diagnostics folded" in log
    top = log.index('<div class="first-error">')
    assert top < log.index("warning #20012-D")  # the error first, the noise after
    assert "static_assert: Could not build a collective for given parameters." in log[top:top + 400]
    assert '<span class="count">× 180</span> warning #20012-D (4 distinct)' in log
    assert '<span class="count">× 180</span> remark' in log  # the identical Remark line, once with its count
    assert log.count("warning #20012-D: __device__") == 4  # each distinct one once, in the fold
    assert log.count("[× 45]") == 4 and "<pre></pre>" not in log


def test_fold_compile_log_units():
    from gpurepro.render.html import fold_compile_log

    text = ("a.cu(1): warning #177-D: variable x declared but never referenced\n  int x;\n  ^\n\n"
            "a.cu(1): warning #177-D: variable x declared but never referenced\n  int x;\n  ^\n\n"
            "a.cu(9): error: identifier \"Foo\" is undefined\n  Foo f;\n  ^\n\n"
            "a.cu(9): error: identifier \"Foo\" is undefined\n  Foo f;\n  ^\n\n"
            "a.cu(12): error: expected a \";\"\n\n2 errors detected in the compilation of \"a.cu\".\n")
    log = fold_compile_log(text)
    assert log.first_error.line == 9 and log.first_error.message == 'identifier "Foo" is undefined'
    assert log.reason == 'a.cu(9): error: identifier "Foo" is undefined'
    assert [f.count for f in log.folds] == [2, 2]  # identical warnings, identical errors; the lone error stays
    assert log.folded == 2
    lone = fold_compile_log("x.cu:3:10: fatal error: curand_kernel.h: No such file or directory\n")
    assert lone.first_error.severity == "fatal error" and not lone.folds


def test_source_diff_from_the_checkout_when_the_run_lacks_the_parent(showcase):
    from gpurepro.manifest import load_manifest
    from gpurepro.render.html import source_diff

    run = showcase_run(showcase, steps=("step02",))
    manifest = load_manifest(showcase.manifest)
    diff = source_diff(run, manifest, "step02")
    assert diff.parent == "step01" and "in this checkout" in diff.where and "may differ from what ran" in diff.where
    assert "+using ElementB = cutlass::mx_float8_t<cutlass::float_e4m3_t>;" in diff.text
    assert "--- repros/step01.cu" in diff.text  # chain.step_diff's labels
    page = (run / "index.html").read_text()
    assert "in this checkout" in page
    assert source_diff(run, manifest, "step00") is None  # a root has no parent
    assert source_diff(run, None, "step02") is None  # no manifest, no parent to know


def test_comparison_of_an_old_run_and_its_replay(showcase, tmp_path):
    from gpurepro.render.html import write_comparison

    old = showcase_run(showcase)
    fixed = {"step01": RUN_OUTPUT["step00"].replace('"step":"step00"', '"step":"step01"')}
    new = showcase_run(showcase, runner=ShowcaseRunner(run_output=fixed, run_codes={"step01": 0}))
    path = write_comparison(old, new)
    assert path == new / "compare.html"
    page = path.read_text()
    assert "<b>1</b> of 3 step results changed outcome" in page
    row = page[page.index('<tr class="changed-row">'):]
    row = row[:row.index("</tr>")]
    assert "step01[sm_120a]" in row and "o-init_error" in row and row.index("init_error") < row.index("o-pass")
    assert '<details id="cmp-step01-sm_120a" class="step s-departed" open>' in page
    assert '<tr class="differs"><th>status</th><td>kErrorInternal</td><td>kSuccess</td></tr>' in page
    assert '<details id="cmp-step00-sm_120a" class="step s-calm">' in page
    assert 'href="compare.html"' in (new / "index.html").read_text()  # the new run's page links it
    assert not re.search(r"<script|(?:src|href)\s*=\s*[\"']?(?:[a-z]+:|//)", page, re.I)


def nightly_run(config):
    from gpurepro.nightly import Target, nightly
    from gpurepro.render.html import write_nightly_report

    flaky_first = {"step02": events(config_event("step02", "mx_float8_t<float_e4m3_t>"), preflight_event(95232),
                                    {"event": "check", "checked": 74752, "mismatches": 12, "max_abs_err": 4.0},
                                    {"event": "result", "outcome": "mismatch"})}
    scripts = {"rtx-pro-6000": [dict(), dict()],
               "dgx-spark": [dict(gpu_smi=GB10, run_output=flaky_first, run_codes={"step02": 1}),
                             dict(gpu_smi=GB10)]}
    made = {name: [] for name in scripts}

    def make_runner(cfg, target, log):
        kwargs = scripts[target.name][min(len(made[target.name]), 1)]
        made[target.name].append(ShowcaseRunner(**kwargs))
        return made[target.name][-1]

    targets = [Target("rtx-pro-6000", "host", arch="sm_120", compile_arch="sm_120a", kernels=False),
               Target("dgx-spark", "host", arch="sm_121", compile_arch="sm_121a", kernels=False)]
    outcome = nightly(config, targets, steps=["step00", "step01", "step02"],
                      reports_dir=config.reports_dir / "nightly", make_runner=make_runner, prepare=None,
                      log=lambda message: None)
    return outcome, write_nightly_report(outcome.path)


def test_nightly_page_puts_first_run_beside_rerun(showcase):
    outcome, path = nightly_run(showcase)
    assert path == outcome.path / "index.html"
    page = path.read_text()
    assert "<th>rtx-pro-6000</th><th>dgx-spark</th>" in page
    assert '<span class="cls c-changed">changed</span> 1' in page and '<span class="cls c-flaky">flaky</span> 1' in page
    # step01 on the RTX: departed twice -> changed, first and rerun side by side
    matrix = page[page.index("<h2>Steps × targets</h2>"):page.index("</table>", page.index("<h2>Steps × targets</h2>"))]
    step01 = matrix[matrix.index("<tr><th>step01</th>"):]
    rtx = step01[:step01.index("</td>")]
    assert '<span class="cls c-changed">changed</span><div class="pair">' in rtx
    assert rtx.count("o-init_error") == 2 and "first" in rtx and "rerun" in rtx  # first beside rerun
    step02 = matrix[matrix.index("<tr><th>step02</th>"):]
    assert '<span class="cls c-flaky">flaky</span><div class="pair"><div><span class=muted>first</span> ' \
           '<span class="outcome o-mismatch">mismatch</span>' in step02
    assert "<h2>Changed (departed twice)</h2>" in page and "<h2>Flaky (departed, then matched)</h2>" in page
    links = re.findall(r'href="(targets/[^"]+/index\.html)"', page)
    assert links and all((outcome.path / link).is_file() for link in links)  # each target's runs linked
    assert not re.search(r"<script|(?:src|href)\s*=\s*[\"']?(?:[a-z]+:|//)", page, re.I)


def test_nightly_page_of_an_unfinished_nightly(tmp_path):
    from gpurepro.render.html import render_nightly

    (tmp_path / "nightly.json").write_text(json.dumps({"nightly_id": "x", "status": "interrupted",
                                                      "targets": ["a", "b"]}))
    assert "the nightly did not finish (targets: a, b)" in render_nightly(tmp_path)
    (tmp_path / "nightly.json").unlink()
    with pytest.raises(BadInputError, match="nightly.json: missing or not JSON"):
        render_nightly(tmp_path)


# --- screenshots -----------------------------------------------------------------------------------------------
SCREENSHOTS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "screenshots"
UPDATE = os.environ.get("GPUREPRO_UPDATE_SCREENSHOTS") == "1"


def screenshot(tmp_path, page: pathlib.Path, out: pathlib.Path, size="1280,1400") -> set:
    chromium(tmp_path, f"--window-size={size}", "--hide-scrollbars", f"--screenshot={out}", page.as_uri())
    assert out.is_file() and out.stat().st_size > 10_000
    return png_pixels(out.read_bytes())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)")
def test_screenshot_of_the_departed_step_view(showcase, tmp_path):
    run = showcase_run(showcase)
    colours = screenshot(tmp_path, run / "index.html", tmp_path / "departed.png")
    assert len(colours) > 50, "the screenshot is (nearly) one colour: nothing rendered"
    on_screen = lambda hex_: tuple(bytes.fromhex(hex_[1:])) in colours  # noqa: E731
    assert on_screen(COLOURS["init_error"])  # the departed outcome
    assert on_screen(DIFF_ADD_BG) and on_screen(DIFF_DEL_BG)  # its source diff, expanded, in view


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)")
@pytest.mark.skipif(not UPDATE, reason="set GPUREPRO_UPDATE_SCREENSHOTS=1 to rewrite docs/screenshots/")
def test_update_docs_screenshots(showcase, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot(tmp_path, showcase_run(showcase) / "index.html", SCREENSHOTS / "departed-step.png", "1280,1500")
    screenshot(tmp_path, showcase_run(showcase, steps=("step03",)) / "index.html",
               SCREENSHOTS / "compile-error-folded.png", "1280,1600")
    _, nightly_page = nightly_run(showcase)
    screenshot(tmp_path, nightly_page, SCREENSHOTS / "nightly.png", "1280,1100")


@pytest.mark.parametrize("name", ["departed-step.png", "compile-error-folded.png", "nightly.png"])
def test_docs_screenshots_are_committed_and_not_blank(name):
    path = SCREENSHOTS / name
    assert path.is_file(), f"{path} missing: GPUREPRO_UPDATE_SCREENSHOTS=1 pytest tests/render/test_html.py"
    assert len(png_pixels(path.read_bytes())) > 50
    assert f"screenshots/{name}" in (SCREENSHOTS.parent / "report.md").read_text()
