#!/usr/bin/env bash
# The wheels tools/gpu_check.sh unpacks when the GPU machine's python3 lacks them (it has torch,
# JAX, flax and optax, and no network): safetensors (the case and result files) and rich with its
# dependencies (the CLIs' console). Pins from requirements/spec.txt. Run where PyPI is reachable;
# .whl/ is git-ignored: send it along with the checkout (the device tool: carry [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${WHEEL_PYTHON_VERSION:-3.12}  # the GPU machine's Python; safetensors is abi3 (3.10+) anyway
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version "$PYVER" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    safetensors==0.8.0 rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2
ls -1 .whl
