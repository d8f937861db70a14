#!/usr/bin/env bash
# One device call: install the carried CuTe DSL, then the fused activation quantizer's tests, the
# router validation and the bench (validate + bench in ONE Python process, so the bench reuses the
# kernels the validation compiled), logs and results to $OUT.
#   carried: .cu13a/ holding cu13.tar.xz.* (the cu13 libs wheel unpacked and packed with
#   `xz --x86 --lzma2=preset=9e,dict=256MiB`: 92 MB as a wheel, ~59 MB so) and base.tar.xz (the
#   three small cutlass-dsl wheels unpacked, same packing); or .whl/ with those wheels instead of
#   base.tar.xz.  One call's working tree + carry must stay under 64 MiB.
# Usage: bash bench/device_session.sh [quant] [tests] [probe] [validate] [bench] [both]   (default: quant both)
#   probe: python -m kernels.router.probe $PROBE_ARGS (kernel configurations checked and timed; appended
#          to $OUT/probe.log, so several probe steps of one call keep their lines)
#   quant: tests/kernels/test_router_quant.py; if it fails, the later steps run with
#          GPUREPRO_ROUTER_FUSED_QUANT=0 (the PyTorch quantizer) and say so
#   both:  validate then bench in one process; BENCH_ARGS adds bench options (default --skip mma_nosplit)
#   handoff_tests / handoff_probe: the forms built 2026-12-04 without a device (the swap-AB kernel quantizing
#          its own tokens, the GEMV's search variant, the operand hand-off): their GPU tests
#          (pytest_handoff.log), then their probe timings beside the shipped forms (appended to probe.log)
#   prefetch: the quantizer pulling the router's weights into L2 (built 2026-12-05): its GPU test, probe timings
#   gemv_parts: T=1, the GEMV quantizing in its own launch with 2 / 4 threads per chunk (variants halves /
#          quarters, built 2026-12-05 in the eighth session; the router's GPUREPRO_ROUTER_INKERNEL_QUANT=halves /
#          quarters, the ninth): their GPU tests (pytest_parts.log), then their timings and per-CTA
#          timestamps beside route alone and the 1-thread form (probe.log)
#   tile_quant: the tile kernel quantizing its own token rows (built 2026-12-05) timed at T=4096 (probe.log;
#          its GPU tests are among handoff_tests')
#   tile_warps: the same with a quantizing warpgroup of its own (setmaxnreg; built 2026-12-05, ninth session):
#          its GPU tests (pytest_tile_warps.log), then timings at MMA registers 192 / 200 / 208 (probe.log)
# Every step runs under `timeout` (QUANT_S, TESTS_S, BOTH_S seconds) so one hang cannot eat the call.
# The device returns at most 8 files from $OUT: all steps together write 8 (pytest_quant.log,
# pytest_gpu.log, probe.log, validate_bench.log, router_{bench,validation}.{md,json}), so a caller
# that adds files of its own to $OUT loses some (2026-12-04: validate_bench.log).
set -u
OUT=${OUT:-/tmp/out}
steps=${*:-quant both}
t0=$(date +%s)
if [ ! -d /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir ] || [ ! -e /tmp/site/.cu13-done ]; then
  mkdir -p /tmp/stage /tmp/site && cp .cu13a/* .cu13b/* /tmp/stage/ 2>/dev/null
  if [ -e /tmp/stage/base.tar.xz ]; then
    # the three small wheels unpacked (what pip --target writes, less pip's metadata) and xz-packed:
    # 2.7 MB instead of 4.6, so that one call carries everything under the 64 MiB limit
    xz -d < /tmp/stage/base.tar.xz | tar xf - -C /tmp/site || exit 3
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/nvidia_cutlass_dsl-4*.whl .whl/nvidia_cutlass_dsl_libs_base*.whl .whl/nvidia_cutlass_dsl_libs_core*.whl || exit 3
  fi
  cat /tmp/stage/cu13.tar.xz.* | xz -d -T0 | tar xf - -C /tmp/site || exit 3
  touch /tmp/site/.cu13-done
fi
export PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/site:$PWD
export PYTHONUNBUFFERED=1
python3 -c "import torch, cutlass; print(torch.cuda.get_device_name(), torch.__version__, cutlass.__version__)" || exit 3
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
echo "setup: $(( $(date +%s) - t0 )) s"
rc=0
# one probe run of the hand-off timings (calibrated layers, no tile kernel), its JSON lines shown
probe_call() {
  timeout "${PROBE_S:-300}" python3 -m kernels.router.probe --calibrated --tile-splits "$@" 2>&1 \
    | tee -a "$OUT/probe.log" | grep -E '^\{|Error' | cut -c1-300
  rc=$((rc | ${PIPESTATUS[0]}))
}
for s in $steps; do
  ts=$(date +%s)
  case $s in
    quant)
      timeout "${QUANT_S:-80}" python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_router_quant.py 2>&1 | tee "$OUT/pytest_quant.log" | tail -12
      r=${PIPESTATUS[0]}
      if [ "$r" != 0 ]; then
        export GPUREPRO_ROUTER_FUSED_QUANT=0
        echo "fused quantizer tests failed (rc=$r): the later steps use the PyTorch quantizer"
      fi
      rc=$((rc | r)) ;;
    tests) timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_router_gpu.py tests/kernels/test_router_fp32_reference.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15 ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    probe) timeout "${PROBE_S:-300}" python3 -m kernels.router.probe ${PROBE_ARGS:-} 2>&1 | tee -a "$OUT/probe.log" ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    handoff_tests)
      timeout "${TESTS_S:-300}" python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_router_gpu.py \
        tests/kernels/test_router_quant.py -k "quantizing or after_the_quantizer or operand" 2>&1 \
        | tee "$OUT/pytest_handoff.log" | tail -15
      rc=$((rc | ${PIPESTATUS[0]})) ;;
    handoff_probe)
      # T <= 8: one launch (the kernel quantizing its tokens) against quantizer + kernel
      probe_call --tokens 2 7 8 --experts 256 384 --swapab 1,7,1,4 1,7,2,4 --decode-variants '' quant \
        --after-quant calibrated
      probe_call --tokens 1 --experts 256 384 --gemv 1,2 --swapab 1,7,1,4 \
        --decode-variants '' quant quant+table quant+table+search --after-quant calibrated
      # the operand hand-off against the codes, after the quantizer plainly and as its dependent
      probe_call --tokens 128 --experts 256 --swapab 2,1,1,4,16,4,0 --decode-variants '' \
        --after-quant calibrated dynamic --operands
      probe_call --tokens 128 --experts 384 --swapab 2,2,3,2,12,4,1 --decode-variants '' \
        --after-quant calibrated dynamic --operands
      probe_call --tokens 7 --experts 256 384 --swapab 1,7,1,4 --decode-variants '' \
        --after-quant calibrated dynamic --operands ;;
    prefetch)
      # the quantizer pulling the router's weights into L2 (GPUREPRO_ROUTER_L2_PREFETCH): its GPU test,
      # then the router's shipped forms after the quantizer with and without it (probe.log)
      timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_router_gpu.py \
        -k prefetching 2>&1 | tee "$OUT/pytest_prefetch.log" | tail -3
      rc=$((rc | ${PIPESTATUS[0]}))
      probe_call --tokens 128 --experts 256 --swapab 2,1,1,4,16,4,0 --after-quant calibrated dynamic --prefetch
      probe_call --tokens 128 --experts 384 --swapab 2,2,3,2,12,4,1 --after-quant calibrated dynamic --prefetch
      probe_call --tokens 1 --experts 256 384 --gemv 1,1 --after-quant calibrated dynamic --prefetch
      probe_call --tokens 7 --experts 256 384 --swapab 1,7,1,4 --after-quant dynamic --prefetch ;;
    gemv_parts)
      timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_router_gpu.py \
        -k "(quantizing_in_kernel and (halves or quarters)) or gemv_quantizing_form" 2>&1 | tee "$OUT/pytest_parts.log" | tail -3
      rc=$((rc | ${PIPESTATUS[0]}))
      for cfg in "256 1,2" "384 1,3" "384 1,2"; do
        set -- $cfg
        probe_call --tokens 1 --experts "$1" --gemv "$2" --decode-variants '' quant+table+search \
          quant+halves+table+search quant+quarters+table+search quant+quarters+search \
          quant+halves+table+search+clock quant+quarters+table+search+clock clock
      done ;;
    tile_quant)
      # T=4096: the tile kernel quantizing its own token rows against quantizer + tile kernel, and
      # route alone with the ring's last slot used (4 k-tiles ahead of the decode instead of 3)
      probe_call --tokens 4096 --experts 256 384 --tile-quant --tile-ahead 4 ;;
    tile_warps)
      # T=4096: the tile kernel with a quantizing warpgroup of its own (built 2026-12-05 in the ninth
      # session, not yet run): its GPU tests beside the plain quantizing form's (pytest_tile_warps.log),
      # then its timings at three register splits beside route alone and quantizer + tile kernel
      timeout "${TESTS_S:-300}" python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_router_gpu.py \
        -k "tile_quantizing_in_kernel" 2>&1 | tee "$OUT/pytest_tile_warps.log" | tail -3
      rc=$((rc | ${PIPESTATUS[0]}))
      probe_call --tokens 4096 --experts 256 384 --tile-quant --tile-quant-regs 192 200 208 ;;
    validate) python3 bench/router_validate.py --out "$OUT" 2>&1 | tee "$OUT/validate.log" | grep -E "FAIL|passed|Error|error" ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    bench) python3 bench/router_bench.py --out "$OUT" ${BENCH_ARGS:---skip mma_nosplit} 2>&1 | tee "$OUT/bench.log" | tail -14 ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    both)
      timeout "${BOTH_S:-220}" python3 - "$OUT" ${BENCH_ARGS:---skip mma_nosplit} <<'EOF' 2>&1 | tee "$OUT/validate_bench.log" | grep -E "FAIL|passed|Error|error|^\{|^\|" | cut -c1-400
import sys
sys.path.insert(0, "bench")
import router_bench
import router_validate

out, extra = sys.argv[1], sys.argv[2:]
rv = router_validate.main(["--out", out])
rb = router_bench.main(["--out", out, *extra])
sys.exit(rv | rb)
EOF
      rc=$((rc | ${PIPESTATUS[0]})) ;;
  esac
  echo "step $s: $(( $(date +%s) - ts )) s (rc so far $rc)"
done
exit $rc
