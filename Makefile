# Two commands: `make demo` (set up + run the embedded default) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the pinned version (DESIGN §9), so nothing resolves to a CUDA build.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/feddat run

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Figures and ratios, not assertions (a few minutes on 2 cores; see README "Speed").
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) runs .pytest_cache
