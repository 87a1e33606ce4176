#!/bin/bash
# A machine slowed during one candidate, on purpose: a busy process runs from the search's first
# progress line to its second (times in busy_candidate_times.txt). From the repo root:
#   bash evals/results/2026-12-06-cpu-speed-probe/busy_candidate.sh /tmp/probe
OUT=${1:-/tmp/probe}
mkdir -p "$OUT/run1"
LOG=$OUT/run1.log
.venv/bin/optimize space=cpu-llamacpp quality.reference=gguf 'space.batch_sizes=[8,16]' \
  'space.llamacpp.weight_types=[gguf,Q8_0]' 'space.llamacpp.kv_types=[f16]' \
  output_dir="$OUT/run1" store_path="$OUT/run1/trials.db" > "$LOG" 2>&1 &
PID=$!
while ! grep -q "\[1/" "$LOG"; do sleep 1; kill -0 $PID 2>/dev/null || exit 1; done
python3 -c "while True: pass" & HOG=$!
echo "hog on $(date +%T)" >> "$OUT/hog.log"
while ! grep -q "\[2/" "$LOG"; do sleep 1; kill -0 $PID 2>/dev/null || break; done
kill $HOG
echo "hog off $(date +%T)" >> "$OUT/hog.log"
wait $PID
echo "rc $?" >> "$OUT/hog.log"
