"""index.html: written for every run, self-contained, complete; rendered by a real (headless) Chromium."""
import html
import json
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from fake_runs import H100, FakeRunner, make_run, project_config
from gpurepro import app
from gpurepro.classify import ExecResult
from gpurepro.render.html import COLOURS, render

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
