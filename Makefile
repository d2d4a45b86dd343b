# deploykit — the two commands a fresh machine needs: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DK := $(BIN)/deploykit
DIR ?= demo-stack
VLLM_DIR ?= demo-stack-vllm
COMPARE_DIR ?= demo-stack-compare
# The rule lives in deploykit/values/paths.py (stdlib only: the system python3 runs it before .venv exists);
# make's own values go with it, so `make demo DEPLOYKIT_MODEL_CACHE=DIR` works as the variable does.
MODEL_CACHE := $(shell DEPLOYKIT_MODEL_CACHE='$(DEPLOYKIT_MODEL_CACHE)' XDG_CACHE_HOME='$(XDG_CACHE_HOME)' \
	$(PYTHON) deploykit/values/paths.py model-cache)
GGUF := $(MODEL_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
FP16 := $(MODEL_CACHE)/smollm2-135m-instruct-fp16
IMAGES_ENV := build/images.env
PROVISION := scripts/provision/provision.sh
PYTEST_ARGS ?=

.PHONY: help venv lint test unit e2e provision demo demo-vllm demo-compare down down-vllm down-compare reference \
	bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed  ## create .venv with deploykit and the test tools

lint: venv  ## ruff + mypy (strict on deploykit/, and on benchmarks/: they call deploykit's seams too)
	$(BIN)/ruff check deploykit tests scripts benchmarks
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

provision:  ## Docker Engine, compose v2, offline images, the tiny model, Chromium (root; skips what exists)
	bash $(PROVISION) all

unit: venv  ## unit tests only (no engine needed)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: venv provision lint  ## every test: unit + end-to-end on a real engine, model and browser
	$(BIN)/pytest tests $(PYTEST_ARGS)

e2e: venv provision  ## end-to-end tests only
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

demo: venv  ## bring the demo stack up offline (llama.cpp, cpu profile) in ./demo-stack and print its URL
	bash $(PROVISION) engine images model
	. $(IMAGES_ENV) && $(DK) up --profile cpu --model smollm2-135m-instruct --model-file "$(GGUF)" \
		--image inference="$$LLAMACPP_IMAGE" --image open-webui="$$OPENWEBUI_IMAGE" --dir "$(DIR)"

demo-vllm: venv  ## the same with vLLM's CPU build and the FP16 model, in ./demo-stack-vllm
	bash $(PROVISION) engine images images-vllm model model-fp16
	. $(IMAGES_ENV) && $(DK) up --profile cpu-vllm --model smollm2-135m-instruct --model-file "$(FP16)" \
		--image inference="$$VLLM_CPU_IMAGE" --image open-webui="$$OPENWEBUI_IMAGE" --dir "$(VLLM_DIR)"

# Each backend's image from the settings' [images] keys: --image inference names one server, and this stack has two.
demo-compare: venv  ## one stack, the demo model twice (FP16 on vLLM's CPU build, GGUF Q4_1 on llama.cpp), side by side in Open WebUI
	bash $(PROVISION) engine images images-vllm model model-fp16
	. $(IMAGES_ENV) && DEPLOYKIT_IMAGES__VLLM_CPU="$$VLLM_CPU_IMAGE" DEPLOYKIT_IMAGES__LLAMA_SERVER="$$LLAMACPP_IMAGE" \
		$(DK) up --profile cpu-vllm --model smollm2-fp16 --model-file "$(FP16)" \
		--model smollm2-q4 --model-file "$(GGUF)" --image open-webui="$$OPENWEBUI_IMAGE" --dir "$(COMPARE_DIR)"

down: venv  ## stop the demo stack, keeping chats, accounts and the model cache
	$(DK) down --dir "$(DIR)"

down-vllm: venv  ## stop the vLLM demo stack, keeping data
	$(DK) down --dir "$(VLLM_DIR)"

down-compare: venv  ## stop the comparison stack, keeping data
	$(DK) down --dir "$(COMPARE_DIR)"

reference: venv  ## re-render compose/<profile>/ for every built-in profile
	$(BIN)/python scripts/render_reference.py

bench: venv  ## benchmarks: figures side by side with their baselines
	$(BIN)/python benchmarks/cli_startup.py
	@if [ -f "$(DIR)/plan.json" ]; then $(BIN)/python benchmarks/memory_estimate.py "$(DIR)" \
		&& $(BIN)/python benchmarks/serving.py "$(DIR)"; \
	else echo "memory_estimate, serving: no running stack in $(DIR) (make demo first)"; fi
	$(BIN)/python benchmarks/readiness.py

clean:  ## remove the venv and build outputs (not images, volumes or the model cache)
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
