# Two commands: `make demo` (set up + run the embedded default) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME := $(VENV)/.installed-runtime

.PHONY: setup demo test contracts docs bench gpu-check study results clean

# pip byte-compiles every file it installs (torch's and transformers' thousands: about 55 s of
# the install on 2 cores); without it Python compiles only the modules a run imports, once, on
# first use (about 7 s).
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile

# What `make demo` needs: the package and its runtime dependencies.
$(RUNTIME): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the pinned version (docs/design.md §9), so nothing resolves to a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e .
	touch $(RUNTIME)

# What `make test` needs on top: the test extras and a browser.
$(STAMP): $(RUNTIME)
	$(PIP) -c constraints.txt -e '.[test]'
	# Debian's Chromium for the report's browser test (tests/test_report.py; Playwright drives it,
	# no browser download). Without root or apt the test says why it is skipped.
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation; } || echo "chromium not installed: tests/test_report.py will be skipped"
	touch $(STAMP)

setup: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/feddat run

# Two pytest-xdist workers, a test file to each at a time (file-scoped fixtures stay shared), in
# the order tests/conftest.py gives them (test_flower.py, the longest, first; xdist would otherwise
# hand out the files with the most tests first).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The architecture contracts alone (pyproject.toml [tool.importlinter]; `make test` runs them too,
# in tests/test_architecture.py).
contracts: $(STAMP)
	$(BIN)/lint-imports --no-cache

# The documentation site (mkdocs.yml) into site/; read it with `python3 -m http.server -d site`
# (or `$(BIN)/mkdocs serve`). Strict: a broken link fails it. `make test` builds it too (tests/test_docs.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# Figures and ratios, not assertions (a few minutes on 2 cores; see docs/guide/speed.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_flower.py

# The regime study (docs/findings.md, "Where FedDAT leads"): trains what no one has recorded yet, resumable
# (kill it and run it again), then records the finished runs in docs/results/regime-study and
# writes its summary there. Hours on 2 CPU cores; on a GPU: make study STUDY="--lanes 1 --threads 4 --device cuda".
STUDY ?= --lanes 2 --threads 1
study: $(RUNTIME)
	$(BIN)/python benchmarks/regime_study.py run $(STUDY)
	$(BIN)/python benchmarks/regime_study.py record
	$(BIN)/python benchmarks/results.py

# Every page under docs/results/ (docs/results/index.md lists them) made again from the runs
# recorded there alone: trains nothing, seconds (benchmarks/results.py).
results: $(RUNTIME)
	$(BIN)/python benchmarks/results.py

# The CUDA + bf16 path, PASS/FAIL per check (benchmarks/gpu_check.py); without CUDA it says so and exits 0.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache site
