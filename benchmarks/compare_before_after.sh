#!/usr/bin/env bash
# Ours against the official peers, before and after a change: the same densenet-bench run in two
# checkouts, sharing one set of environments, then ours/peer ratios of training throughput and
# peak RSS per framework.
#
#   benchmarks/compare_before_after.sh before /work/before /work/notes/bench-before.jsonl
#   benchmarks/compare_before_after.sh after  /work/main   /work/notes/bench-after.jsonl
#   benchmarks/compare_before_after.sh ratios /work/notes/bench-before.jsonl /work/notes/bench-after.jsonl
#
# A checkout from before densenet_bench existed runs `-m benchmarks.cli` (no --model option: its
# one model is what the fast variant replaced); a current one runs `-m densenet_bench.cli` with both
# model variants. FRAMEWORKS (default torch,jax,tf,mx) and EXTRA (e.g. "--rounds 2") are passed on.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export DENSENET_ENVS="${DENSENET_ENVS:-$HERE/.venvs}"
PY="$DENSENET_ENVS/spec/bin/python"
FRAMEWORKS="${FRAMEWORKS:-torch,jax,tf,mx}"
# channels_last and hybridize: the peers' own fast paths (torchvision, Gluon), cheap to compile
ARGS=(--frameworks "$FRAMEWORKS" --peers --preset densenet121 --batch 4 --image-size 224
      --mode train --iters 5 --warmup 1 --threads 1 --fast channels_last,hybridize --no-setup)
case "${1:-}" in
  before|after)
    tree="$2" out="$3"
    if [ -d "$tree/densenet_bench" ]; then
      module=densenet_bench.cli
      ARGS+=(--model plain,fast)
    else
      module=benchmarks.cli
    fi
    # shellcheck disable=SC2086
    (cd "$tree" && PYTHONPATH="$tree" "$PY" -m "$module" "${ARGS[@]}" ${EXTRA:-} --json "$out")
    ;;
  ratios)
    shift
    PYTHONPATH="$HERE" "$PY" -m densenet_bench.report --ratios "$@"
    ;;
  *)
    sed -n 2,13p "$0"
    exit 2
    ;;
esac
