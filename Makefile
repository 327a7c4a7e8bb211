# vaegrid — every target works on a fresh clone: `make test` installs what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
STUDY   ?= studies/seed.toml
RESULTS ?= results

.PHONY: install test test-slow test-all lint bench grid clean

# Re-runs only when pyproject.toml is newer than the last successful install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The fast suite (the README's test command); `make test-all` adds the slow end-to-end tests.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The slow end-to-end tests: kill -9 and resume, K workers per device, 1 vs 2 workers.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vaegrid tests bench
	$(BIN)/ruff format --check vaegrid tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_trial.py

# Sweep the seed study (resuming whatever is already there), then rank, test and export.
# A sweep with failed trials exits 1: the report is still made from what completed.
grid: $(STAMP)
	$(BIN)/vaegrid run $(STUDY) --results $(RESULTS) || [ $$? -eq 1 ]
	$(BIN)/vaegrid report $(RESULTS)/$$($(BIN)/python -c \
	  "from vaegrid.study import load_study; print(load_study('$(STUDY)').name)")

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
