#!/usr/bin/env bash
# The prepared GPU run (issue 21): parity and benchmarks of torch and JAX on one NVIDIA GPU.
#
#   tools/gpu_check.sh [OUT]        (default OUT: gpu-check; $OUT on the device machine if set)
#
# For a machine with one NVIDIA GPU, no network, and torch, JAX (+ flax, optax) in its python3
# (torchvision, timm, keras where present; no TensorFlow or MXNet needed). Nothing is installed
# into that Python: what it lacks of safetensors and rich is unpacked from .whl/
# (tools/fetch_wheels.sh) into OUT/site, put on PYTHONPATH. Within BUDGET_S seconds (default 450):
#   1. densenet-parity, torch and JAX on the GPU against the CPU NumPy oracle: float64 and
#      float32, d2l and densenet121 at 224 px, TF32 off (the parity settings);
#   2. the float32 runs again with TF32 at the framework default: how far results move
#      (recorded, not a failure);
#   3. densenet-bench on the GPU: ours beside torchvision (timm, Keras-on-JAX where present),
#      batch 64 at 224 px, inference and training, device peak memory;
#   4. OUT/README.md and OUT/summary.json (tools/gpu_report.py), beside every log and JSON file.
# Exit: 0 all parity runs passed; 1 something failed (see OUT/README.md); 3 no GPU here.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$(mkdir -p "${1:-${OUT:-gpu-check}}" && cd "${1:-${OUT:-gpu-check}}" && pwd)
PY=${PYTHON:-$(command -v python3)}
BUDGET_S=${BUDGET_S:-450}
START=$(date +%s)
say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$OUT/gpu_check.log"; }

# --- a GPU, or stop at once -------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >"$OUT/gpus.txt" 2>&1 \
    || ! grep -q "^GPU " "$OUT/gpus.txt"; then
    echo "gpu_check: no GPU: nvidia-smi finds no NVIDIA GPU on this machine; nothing was run." \
        | tee "$OUT/NO_GPU.txt"
    exit 3
fi
say "GPU: $(head -1 "$OUT/gpus.txt")"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv \
    >"$OUT/device.csv" 2>&1

# --- what the spec and the workers need beyond torch/JAX: unpack missing wheels, never install --
SITE="$OUT/site"
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"safetensors": "safetensors", "rich": "rich", "pygments": "pygments",
        "markdown_it": "markdown_it_py", "mdurl": "mdurl", "numpy": "numpy"}
print(" ".join(w for m, w in need.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    say "python3 lacks: $missing; unpacking from .whl/ into $SITE"
    "$PY" - "$SITE" $missing <<'EOF' || { say "cannot continue: run tools/fetch_wheels.sh where PyPI is reachable and send .whl/ along"; exit 1; }
import pathlib, sys, zipfile
site, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
site.mkdir(parents=True, exist_ok=True)
for name in names:
    wheels = sorted(pathlib.Path(".whl").glob(f"{name}-*.whl"), key=lambda p: p.name.lower())
    if not wheels:
        sys.exit(f"no {name} wheel in .whl/")
    zipfile.ZipFile(wheels[-1]).extractall(site)  # a wheel is a zip of site-packages files
EOF
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX takes what it uses, not 75% of the GPU
"$PY" - >"$OUT/versions.json" 2>>"$OUT/gpu_check.log" <<'EOF'
import importlib.metadata, json, platform
out = {"python": platform.python_version()}
for m in ("torch", "torchvision", "timm", "jax", "jaxlib", "flax", "optax", "keras", "numpy",
          "safetensors", "rich", "matplotlib"):
    try:
        out[m] = importlib.metadata.version(m)
    except importlib.metadata.PackageNotFoundError:
        out[m] = None
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as e:
    out["torch_devices"] = f"{type(e).__name__}: {e}"
try:
    import jax
    out["jax_devices"] = [str(d) for d in jax.devices()]
except Exception as e:
    out["jax_devices"] = f"{type(e).__name__}: {e}"
print(json.dumps(out, indent=1))
EOF
say "versions: $(tr -d '\n ' <"$OUT/versions.json")"
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
help_has() { "$PY" -m "$1" --help 2>/dev/null | grep -q -- "$2"; }

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# run NAME SECONDS CMD...: with a timeout, logged; skipped (recorded) when the budget is spent
run() {
    local name=$1 need=$2
    shift 2
    if [ "$(left)" -lt "$need" ]; then
        say "SKIPPED $name: $(left) s of the budget left, it needs about $need"
        echo "skipped: time budget" >"$OUT/$name.skipped"
        return 0
    fi
    say "running $name"
    local t0=$(date +%s)
    timeout "$(left)" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$rc $(($(date +%s) - t0))" >"$OUT/$name.rc"
    say "$name: exit $rc in $(($(date +%s) - t0)) s"
}

PYTHONS=(--python "torch=$PY" --python "jax=$PY")
PARITY=("$PY" -m densenet_spec.cli --frameworks torch,jax --device gpu --image-size 224
    --batch 2 --steps 1 --no-setup "${PYTHONS[@]}")
if ! help_has densenet_spec.cli "--python"; then
    say "densenet-parity has no --python option: this checkout predates the wire-in (issue 21)"
fi
# 1. TF32 off (the parity settings), the small net first: results arrive before the budget ends
for preset in d2l densenet121; do
    for dtype in float64 float32; do
        name="parity-$preset-$dtype"
        run "$name" 60 "${PARITY[@]}" --preset "$preset" --dtype "$dtype" --json "$OUT/$name.json"
    done
done
# 2. TF32 at the framework default (float32 only: TF32 does not touch float64)
if help_has densenet_spec.cli "--tf32"; then
    for preset in d2l densenet121; do
        name="parity-$preset-float32-tf32"
        run "$name" 60 "${PARITY[@]}" --preset "$preset" --dtype float32 --tf32 default \
            --json "$OUT/$name.json"
    done
else
    say "SKIPPED TF32-default runs: densenet-parity has no --tf32 option yet (issue 21 wire-in)"
    echo "skipped: densenet-parity has no --tf32 option" >"$OUT/parity-tf32.skipped"
fi
# 3. benchmarks: ours and the official peers this python3 has
targets=torch,jax
has torchvision && targets+=,torchvision
has timm && "$PY" -c "from densenet_bench.targets import TARGETS; assert 'timm' in TARGETS" \
    2>/dev/null && targets+=,timm
has keras && targets+=,keras-jax
BENCH=("$PY" -m densenet_bench.cli --frameworks "$targets" --model plain --device gpu
    --batch 64 --image-size 224 --mode both --iters 10 --warmup 2 --peak-size 0 --no-setup
    --json "$OUT/bench.jsonl")
for t in torch jax torchvision timm keras-jax; do
    case ",$targets," in *",$t,"*) ;; *) continue ;; esac
    case $t in
        torch | jax) BENCH+=(--python "$t=$PY") ;;
        torchvision) BENCH+=(--python "bench-torchvision=$PY") ;;
        keras-jax) BENCH+=(--python "bench-keras-jax=$PY") ;;
    esac
done
rm -f "$OUT/bench.jsonl"
run bench 90 "${BENCH[@]}"

# 4. the readable summary
"$PY" tools/gpu_report.py "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
say "done: $OUT/README.md"
exit "$rc"
