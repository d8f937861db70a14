#!/usr/bin/env bash
# One device call: install the carried CuTe DSL, then the router validation, the GPU tests
# (two-kernel reference and the independent float64 reference) and the bench, logs to $OUT.
#   carried: .whl/ (the small cutlass-dsl wheels), .cu13/cu13.tar.xz* (the cu13 libs wheel,
#   unpacked and xz-packed because the wheel is over the 64 MiB carry limit)
# Usage: bash bench/device_session.sh [validate] [tests] [bench]   (all three by default)
set -u
OUT=${OUT:-/tmp/out}
steps=${*:-validate tests bench}
if [ ! -d /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir ] || [ ! -e /tmp/site/.cu13-done ]; then
  mkdir -p /tmp/stage && cp .cu13a/* .cu13b/* /tmp/stage/ 2>/dev/null
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/nvidia_cutlass_dsl-4*.whl .whl/nvidia_cutlass_dsl_libs_base*.whl .whl/nvidia_cutlass_dsl_libs_core*.whl || exit 3
  cat /tmp/stage/cu13.tar.xz.* | xz -d -T0 | tar xf - -C /tmp/site || exit 3
  touch /tmp/site/.cu13-done
fi
export PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/site:$PWD
export PYTHONUNBUFFERED=1
python3 -c "import torch, cutlass; print(torch.cuda.get_device_name(), torch.__version__, cutlass.__version__)" || exit 3
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
rc=0
for s in $steps; do
  case $s in
    validate) python3 bench/router_validate.py --out "$OUT" 2>&1 | tee "$OUT/validate.log" | grep -E "FAIL|passed|Error|error" ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    tests) python3 -m pytest -q -p no:cacheprovider tests/kernels/test_router_gpu.py tests/kernels/test_router_fp32_reference.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15 ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    bench) python3 bench/router_bench.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -14 ; rc=$((rc | ${PIPESTATUS[0]})) ;;
    quick) python3 bench/router_bench.py --out "$OUT" --tokens 1 7 128 --experts 256 384 --skip mma_nosplit fused+quant 2>&1 | tee "$OUT/bench_quick.log" | tail -8 ; rc=$((rc | ${PIPESTATUS[0]})) ;;
  esac
done
exit $rc
