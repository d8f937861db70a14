"""Test support: a runner that runs nothing and answers each command from a script (no Docker, no GPU)."""
from __future__ import annotations

from gpurepro.classify import ExecResult
from gpurepro.runners.base import Runner

HELLO_RUN = "\n".join([
    '@@repro {"event":"config","step":"hello"}',
    '@@repro {"event":"status","stage":"run","status":"kSuccess","cuda_error":"cudaSuccess"}',
    '@@repro {"event":"check","max_abs_err":0,"mismatches":0,"checked":1}',
    '@@repro {"event":"result","outcome":"pass"}',
])
PREFLIGHT = '@@repro {"event":"config","step":"hello"}\n@@repro {"event":"layout","name":"sf","type":"int","bytes_hex":"00"}'


class FakeRunner(Runner):
    """Runs nothing: answers each command from a script, records what was asked."""

    name = "fake"

    def __init__(self, *, gpu_smi="", cuobjdump="ELF file 1: hello.1.sm_90a.cubin", compile_code=0,
                 compile_output="", run_output=HELLO_RUN, run_code=0, fail_on=None, image_id=None):
        self.files = {}
        self.calls = []
        self.gpu_smi = gpu_smi
        self.cuobjdump = cuobjdump
        self.compile = (compile_code, compile_output)
        self.run = (run_code, run_output)
        self.fail_on = fail_on
        self.removed = []
        self.image_id = image_id  # with one, compiles are keyed and cached like the docker backend's

    def describe(self):
        return {"image_id": self.image_id} if self.image_id else {}

    def start(self):
        self.calls.append(["start"])

    def put_files(self, dest, files, *, executable=frozenset()):
        for name, data in files.items():
            self.files[f"{dest}/{name}"] = data

    def exec(self, argv, *, workdir, timeout_s, env=None):
        self.calls.append(list(argv))
        if self.fail_on and self.fail_on(argv):
            raise self.fail_on.exc
        if argv[0] == "bash":
            return ExecResult(argv, 0, f"nvcc_path=/opt/cuda/bin/nvcc\ncutlass_version=4.5.0\ngpu_smi={self.gpu_smi}\n")
        if argv[0] == "nvcc":
            code, output = self.compile
            if code == 0:
                self.files[f"{workdir}/{argv[argv.index('-o') + 1]}"] = b"\x7fELF"
            return ExecResult(argv, code, output, seconds=2.0)
        if argv[0] == "cuobjdump":
            return ExecResult(argv, 0, self.cuobjdump)
        if argv[-1] == "--preflight-only":
            return ExecResult(argv, 0, PREFLIGHT)
        code, output = self.run
        return ExecResult(argv, code, output, seconds=0.5)

    def get_files(self, path):
        prefix = path.rstrip("/") + "/"
        return {k[len(prefix):]: v for k, v in self.files.items() if k.startswith(prefix)}

    def remove_dir(self, path):
        self.removed.append(path)

    def work_root(self):
        return "/work"

    def flashinfer_root(self):
        return "/workspace/flashinfer"


STEPS = [
    {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass", "sm_120": "skipped"}},
    {"id": "broken", "file": "broken.cu", "parent": "hello", "change": "bad SF vector size", "targets": ["sm_120a"],
     "compile": {"sm_120a": "compile_error"}, "expect": {"sm_90": "skipped"}},
]


KERNELS_PROBE = ('@@kernels-probe {"python": "3.11.2", "executable": "/usr/bin/python3", "torch": "2.13.0+cpu", '
                 '"pytest": "9.0", "hypothesis": "6.1", "numpy": "2.0", "rich": "14", "missing": {}}')
KERNELS_JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.kernels.test_nvfp4_format" name="test_roundtrip[cpu]" time="0.1"/>
<testcase classname="tests.kernels.test_nvfp4_format" name="test_scales[cpu]" time="0.2">
<failure message="AssertionError: 3 != 4">trace</failure></testcase>
<testcase classname="tests.kernels.test_router_gpu" name="test_gpu" time="0.0">
<skipped message="no CUDA device"/></testcase>
</testsuite></testsuites>
"""


class FakeKernelsRunner(FakeRunner):
    """kernels.test's commands answered from a script: the Python probe, then pytest writing its JUnit."""

    def __init__(self, *, probe=KERNELS_PROBE, junit=KERNELS_JUNIT, pytest_code=1, during_pytest=None, **kw):
        super().__init__(**kw)
        self.probe_output = probe
        self.junit = junit
        self.pytest_code = pytest_code
        self.during_pytest = during_pytest  # called while "pytest runs": look at the run from outside

    def exec(self, argv, *, workdir, timeout_s, env=None):
        if argv[:2] == ["python3", "-c"] or (len(argv) > 1 and argv[1] == "-c"):
            self.calls.append(list(argv))
            return ExecResult(argv, 0, self.probe_output)
        if "pytest" in argv:
            self.calls.append(list(argv))
            if self.during_pytest:
                self.during_pytest()
            if self.junit is not None:
                self.files[f"{workdir}/out/pytest-junit.xml"] = self.junit
            return ExecResult(argv, self.pytest_code, "== 1 failed, 1 passed, 1 skipped ==", seconds=1.5)
        return super().exec(argv, workdir=workdir, timeout_s=timeout_s, env=env)
