"""The router kernels compile without a GPU (``cute.compile`` with ``CUTE_DSL_ARCH``), and the PTX
holds the instructions each kernel is built on.  Each compile runs in a subprocess because the
DSL reads the target architecture once per process."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")
if importlib.util.find_spec("cutlass") is None:
    pytest.skip("nvidia-cutlass-dsl is not installed (pip install nvidia-cutlass-dsl)", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _compile(kernel, arch, *extra):
    env = dict(os.environ, CUTE_DSL_ARCH=arch, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "kernels.router.compile_check", "--kernel", kernel, "--arch", arch, *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result line (rc={p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    res = json.loads(lines[-1])
    return p.returncode, res, p.stderr


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a", "sm_120a"])
def test_portable_kernel_compiles(arch):
    # warp-level bf16 mma.sync, no tcgen05/wgmma: the same source builds for Ampere, Hopper and SM12x
    rc, res, err = _compile("portable", arch, "--topk", "6", "8", "--expect-ptx", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    assert len(res["compiled"]) == 2 * 2 * 2  # k x scoring x tile configs
    assert "tcgen05" not in err


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a", "sm_120a"])
def test_decode_kernels_compile(arch):
    # the decode kernels (CUDA-core GEMV, tensor-core swap-AB): 16-byte loads, prmt + dp4a decode,
    # redux.sync picks, the polled route's relaxed gpu-scope loads; the GEMV quantizing its bf16
    # activations (div.rn like the quantizer); the swap-AB one's fp16 decode (mul.rn.f16x2 by the
    # scale) feeding fp16 mma.sync, 8-byte K units, the tokens as the quantizer's fp16 operands;
    # the staged kernel's cp.async ring, shared-memory fragments and waiting route (ld.acquire spin)
    rc, res, err = _compile("gemv", arch, "--topk", "6", "--expect-ptx", "shfl.sync.bfly", "--expect-ptx", "redux.sync",
                            "--expect-ptx", "ld.global.v4", "--expect-ptx", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                            "--expect-ptx", "mul.rn.f16x2", "--expect-ptx", "dp4a.s32.s32", "--expect-ptx", "prmt.b32",
                            "--expect-ptx", "ld.relaxed.gpu", "--expect-ptx", "cp.async.ca.shared.global",
                            "--expect-ptx", "ld.shared.v4", "--expect-ptx", "ld.acquire.gpu",
                            "--expect-ptx", "div.rn.f32")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    # scoring x (2 GEMV + 2 quantizing GEMV + 2 swap-AB + the swap-AB reading the quantizer's fp16
    # operands + 2 staged configs + the one-CTA-per-SM swap-AB forms: 16 warps with the spread route,
    # and from SM90 the 12-warp K-split cluster pairs)
    pairs = arch != "sm_80"
    assert len(res["compiled"]) == 2 * (9 + 1 + pairs)
    for scoring in ("softmax", "sigmoid"):
        assert f"k=6,{scoring},swapab nt=2,ksplit=1,mw=1,uw=4,warps=16,spread=4,pair=False" in res["compiled"]
        assert (f"k=6,{scoring},swapab nt=2,ksplit=2,mw=2,uw=2,warps=12,spread=4,pair=True" in res["compiled"]) == pairs
    assert "mma" not in res and "tcgen05" not in err


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a", "sm_120a"])
def test_tile_kernel_compiles(arch):
    # the pipelined large-T kernel: cp.async ring of packed operands, decode to fp16 (lop3 +
    # mul.rn.f16x2), ldmatrix, fp16 mma.sync with fp32 accumulate; its in-kernel route (one atomic
    # per row tile), the route kernel of the default path (warp shuffles), the stream-K grid
    rc, res, err = _compile("tile", arch, "--topk", "6", "--scorings", "softmax",
                            "--expect-ptx", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                            "--expect-ptx", "cp.async.cg.shared.global", "--expect-ptx", "ldmatrix",
                            "--expect-ptx", "mul.rn.f16x2", "--expect-ptx", "lop3.b32", "--expect-ptx", "atom",
                            "--expect-ptx", "shfl.sync.bfly")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    assert res["compiled"] == ["k=6,softmax,tile splits=1", "k=6,softmax,tile splits=4",
                               "k=6,softmax,tile stream-K 264 CTAs", "k=6,softmax,split route stream-K",
                               "k=6,softmax,tile splits=4 stages=3",
                               "k=6,softmax,tile splits=4 route in kernel", "k=6,softmax,split route splits=4"]
    assert "tcgen05" not in err and "wgmma" not in err


def test_tile_ring_depth_fits_the_device_smem():
    # SM80/SM90 give a CTA up to 163 / 227 KB: the 4-deep ring (~101 KB, two CTAs per SM);
    # SM120/SM121 give 99 KB: the 3-deep ring; less than that is refused with the sizes
    from kernels.router.tile import STAGES, TileRouterKernel, pick_stages, tile_smem_bytes

    assert pick_stages(227 * 1024) == STAGES == 4
    assert pick_stages(163 * 1024) == 4
    assert tile_smem_bytes(4) > 99 * 1024 >= tile_smem_bytes(3)
    assert pick_stages(99 * 1024) == 3
    with pytest.raises(ValueError, match="SMEM per CTA"):
        pick_stages(64 * 1024)
    assert TileRouterKernel(6, "softmax", False, 4, stages=3).smem_bytes == tile_smem_bytes(3)
    with pytest.raises(ValueError, match="do not fit"):
        TileRouterKernel(16, "softmax", False, 4, route_in_kernel=True, stages=3)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a", "sm_120a"])
def test_activation_quantizer_compiles(arch):
    # the fused NVFP4 activation quantizer: IEEE div/mul/add through PTX (bit-identical to PyTorch),
    # 16-byte loads, the epoch grid barrier (64-bit slots stored and polled relaxed at gpu scope, no
    # atomic), no fp8/fp4 cvt
    rc, res, err = _compile("quant", arch, "--expect-ptx", "div.rn.f32", "--expect-ptx", "ld.global.v4",
                            "--expect-ptx", "st.relaxed.gpu.global.b64", "--expect-ptx", "ld.relaxed.gpu.global.b64")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    assert res["compiled"] == ["quant dynamic=True replicate", "quant dynamic=False table", "quant dynamic=True table",
                               "quant dynamic=True barrier=slots", "quant dynamic=True barrier=atomic",
                               "quant dynamic=False operands", "quant dynamic=False", "quant dynamic=True"]
    # the grid barrier needs quant.CTAS_PER_SM CTAs of 256 threads resident on one SM: <= 64 registers
    # (the table forms' registers counted too: each form's cubin is read before the next overwrites it)
    assert res["registers"] and max(res["registers"]) <= 64, res["registers"]
    assert len(res["registers"]) >= 2, res["registers"]


def test_sm100_kernel_compiles_for_sm_100a():
    rc, res, err = _compile("sm100", "sm_100a", "--topk", "6", "8",
                            "--expect-ptx", "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.block16",
                            "--expect-ptx", "tcgen05.cp", "--expect-ptx", "tcgen05.ld", "--expect-ptx", "cp.async.bulk.tensor")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    assert res["compiled"] == ["k=6,softmax", "k=6,sigmoid", "k=8,softmax", "k=8,sigmoid"]


def test_compile_check_fails_on_missing_instruction():
    # the PTX check can fail: the portable kernel has no tcgen05 MMA
    rc, res, _ = _compile("portable", "sm_80", "--scorings", "sigmoid", "--expect-ptx", "tcgen05.mma")
    assert rc == 1 and not res["ok"] and res["missing_ptx"] == ["tcgen05.mma"]


@pytest.mark.parametrize("arch", ["sm_90a", "sm_120a"])
@pytest.mark.parametrize("kernel,expect,compiled", [
    ("gemv", "griddepcontrol.wait", ["k=6,softmax,tm=1,rb=1,pdl", "k=6,softmax,swapab nt=1,ksplit=7,pdl",
                                     "k=6,softmax,swapab nt=2,ksplit=2,pdl", "k=6,softmax,swapab operands nt=1,ksplit=7,pdl"]),
    ("tile", "griddepcontrol.wait", ["k=6,softmax,tile splits=4,pdl"]),
    ("quant", ("griddepcontrol.launch_dependents", "cp.async.bulk.prefetch.L2.global"),
     ["quant dynamic=True replicate trigger",
                                                   "quant dynamic=False trigger prefetch", "quant dynamic=False trigger",
                                                   "quant dynamic=True trigger"]),
])
def test_programmatic_dependent_launch_forms_compile(arch, kernel, expect, compiled):
    # SM90+ only (griddepcontrol): the router kernels launched after the fused quantizer wait for
    # it; the quantizer lets them start early
    expects = (expect,) if isinstance(expect, str) else expect
    rc, res, err = _compile(kernel, arch, "--pdl", *(a for e in expects for a in ("--expect-ptx", e)))
    assert rc == 0 and res["ok"], (res, err[-3000:])
    assert res["compiled"] == compiled


@pytest.mark.parametrize("arch", ["sm_90a", "sm_120a"])
def test_handoff_kernel_compiles(arch, tmp_path):
    # the probe's empty kernel in the quantizer's place (kernels/router/handoff.py): with trigger its
    # PTX lets the dependent start, without it does nothing at all
    code = (
        "import glob, os, torch\n"
        "import cutlass.cute as cute\n"
        "from kernels.router.handoff import TriggerKernel\n"
        "from kernels.router.runtime import current_stream, to_cute\n"
        "args = (to_cute(torch.zeros(4, dtype=torch.int32)), current_stream())\n"
        "for trigger in (False, True):\n"
        "    cute.compile(TriggerKernel(trigger), *args)\n"
        "    files = glob.glob(os.path.join(os.environ['CUTE_DSL_DUMP_DIR'], '*.ptx'))\n"
        "    ptx = ''.join(open(f).read() for f in files)\n"
        "    print(trigger, len(files), 'griddepcontrol.launch_dependents' in ptx)\n"
        "    for f in files:\n"
        "        os.remove(f)\n"
    )
    env = dict(os.environ, CUTE_DSL_ARCH=arch, CUTE_DSL_KEEP="ptx", CUTE_DSL_DUMP_DIR=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split("\n")[:2] == ["False 1 False", "True 1 True"], p.stdout


def test_tile_kernel_quantizing_its_token_rows_compiles_for_two_ctas_per_sm():
    # the tile kernel reading bf16 token rows and quantizing them per k-tile (SM90+, calibrated
    # scale), split and stream-K grids: the bf16x2 search and the MMAs in its PTX, and at most 255
    # registers (its launch bound keeps two CTAs per SM, as the shipped form's); with a quantizing
    # warpgroup of its own, 256 threads launched at 128 registers (two CTAs per SM) and setmaxnreg
    # handing the MMA warpgroup more
    rc, res, err = _compile("tile-quant", "sm_90a", "--expect-ptx", "set.ge.u32.bf16x2", "--expect-ptx", "max.u16x2",
                            "--expect-ptx", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                            "--expect-ptx", "setmaxnreg.inc.sync.aligned.u32",
                            "--expect-ptx", "setmaxnreg.dec.sync.aligned.u32")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    forms = ["k=6,softmax,tile quant splits=4", "k=6,softmax,tile quant splits=4,quant_warps=4",
             "k=6,softmax,tile quant stream-K 264 CTAs", "k=6,softmax,tile quant stream-K 264 CTAs,quant_warps=4"]
    assert res["compiled"] == forms
    regs = res["form_registers"]
    assert sorted(regs) == sorted(forms), regs
    assert all(regs[f] <= 255 for f in forms) and all(regs[f] == 128 for f in forms if "quant_warps" in f), regs


@pytest.mark.parametrize("arch", ["sm_90a", "sm_120a"])
def test_sm90_in_kernel_quantization_forms_compile(arch):
    # the SM90+ in-kernel quantization (bf16x2 compares to u32 masks, u16x2 max): the GEMV's codes
    # by the search (probe variant; 1, 2 and 4 threads per chunk), the swap-AB kernel quantizing its bf16 tokens itself with
    # 8-byte units over several units per warp and in the T <= 8 form at hidden 7168 (7 K splits,
    # 16-byte units, 8 warps).  The swap-AB forms are compiled for two CTAs per SM (<= 128
    # registers), as the plain forms are (E=384: 168 CTAs on 132 SMs would otherwise run in two
    # waves): a launch bound of one CTA per SM let ptxas take 142 (checked: no spills at 128)
    rc, res, err = _compile("inkernel-quant", arch, "--expect-ptx", "set.ge.u32.bf16x2", "--expect-ptx", "max.u16x2",
                            "--expect-ptx", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
    assert rc == 0 and res["ok"], (res, err[-3000:])
    forms = ["k=6,softmax,tm=1,rb=2,quant=static,table+search",
             "k=6,softmax,E=256,tm=1,rb=2,quant=static,halves+table+search",
             "k=6,softmax,E=256,tm=1,rb=2,quant=static,quarters+table+search",
             "k=6,softmax,E=384,tm=1,rb=3,quant=static,halves+table+search",
             "k=6,softmax,E=384,tm=1,rb=3,quant=static,quarters+table+search",
             "k=6,softmax,swapab quant nt=1,ksplit=2,uw=2", "k=6,softmax,swapab quant nt=1,ksplit=7,uw=4"]
    assert res["compiled"] == forms
    regs = res["form_registers"]
    assert sorted(regs) == sorted(forms) and max(regs.values()) <= 128, regs
    # the GEMV's 1024-thread form (quarters) launches only within 64 registers a thread
    assert all(regs[f] <= 64 for f in forms if "quarters" in f), regs
