#!/usr/bin/env bash
# Install a CPU build of PyTorch for the `kernels` test-suite (idempotent).
#
#   bash kernels/install-cpu-torch.sh            # installs into `python3`
#   PYTHON=/path/to/python bash kernels/install-cpu-torch.sh
#
# Order of preference:
#   1. torch already importable (any version, e.g. 2.11 on the GPU machine) -> nothing to do.
#   2. A CPU-only wheel of the pinned version in the machine's local wheel
#      directory (${TORCH_WHEEL_DIR:-/opt/wheels}); on the project's dev/CI image
#      this is torch-2.13.0+cpu for CPython 3.11: ~190 MB wheel, ~0.9 GB installed,
#      ~25 s.  `pip install torch==2.13.0` finds it through pip's find-links.
#   3. Otherwise PyPI.  PyPI has no CPU-only torch wheel for Linux x86_64: its
#      wheels link the CUDA libraries (libcudnn, libcublas, libnccl, ... are
#      DT_NEEDED by torch/lib/*.so), so `pip install --no-deps torch` does NOT
#      import ("libcudnn.so.9: cannot open shared object file").  The fallback is
#      therefore the ordinary install with its nvidia-* dependencies (several GB).
#      It still runs fine on a machine without a GPU.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"

if "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "install-cpu-torch: torch $("$PY" -c 'import torch; print(torch.__version__)') already importable; nothing to do"
    exit 0
fi

if ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "install-cpu-torch: '$PY -m pip' is not available" >&2
    exit 1
fi

pip_args=(install --disable-pip-version-check --no-input)
# Debian's system Python is "externally managed" (PEP 668); outside a venv pip
# refuses to install unless told otherwise.  CI machines are throw-away.
if "$PY" - <<'PYEOF'
import os, sys, sysconfig
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")
sys.exit(0 if (os.path.exists(marker) and not in_venv) else 1)
PYEOF
then
    pip_args+=(--break-system-packages)
fi

tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
arch="$(uname -m)"
local_wheel=""
if [ -d "$WHEEL_DIR" ]; then
    local_wheel="$(ls "$WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-"$tag"-"$tag"-*"$arch".whl 2>/dev/null | head -n1 || true)"
fi

start=$(date +%s)
if [ -n "$local_wheel" ]; then
    echo "install-cpu-torch: installing local CPU wheel $local_wheel"
    "$PY" -m pip "${pip_args[@]}" "$local_wheel"
else
    echo "install-cpu-torch: no local CPU wheel for $tag/$arch; installing torch==$TORCH_VERSION from the package index (large: CUDA libraries included)"
    "$PY" -m pip "${pip_args[@]}" "torch==$TORCH_VERSION"
fi
end=$(date +%s)

"$PY" -c 'import torch; t = torch.ones(4).to(torch.float8_e4m3fn).float(); assert float(t.sum()) == 4.0; print("install-cpu-torch: torch", torch.__version__, "OK")'
echo "install-cpu-torch: done in $((end - start)) s"
