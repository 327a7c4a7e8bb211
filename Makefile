# vaegrid — every target works on a fresh clone: `make test` installs what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
STUDY   ?= studies/seed.toml
RESULTS ?= results

LOCK    := requirements.lock

.PHONY: install lock test test-slow test-all lint docs bench bench-store bench-scale identity grid clean

# Exact versions of every package from the checked-in lock, then vaegrid itself (editable,
# no dependencies of its own): two fresh installs compute with the same libraries.
# Re-runs only when pyproject.toml or the lock is newer than the last successful install.
$(STAMP): pyproject.toml $(LOCK)
	@echo "make: installing $$(grep -c '==' $(LOCK)) pinned packages into $(VENV) (torch's CUDA build"\
	  "is most of it: about 2 minutes and 6 GB the first time; seconds when already there)"
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PY) -m venv $(VENV); \
	$(BIN)/python -m pip install --quiet -r $(LOCK) > $(VENV)/pip.log 2>&1 \
	  || { grep -v "^WARNING: Location" $(VENV)/pip.log; exit 1; }; \
	$(BIN)/python -m pip install --quiet --no-deps -e . > $(VENV)/pip.log 2>&1 \
	  || { grep -v "^WARNING: Location" $(VENV)/pip.log; exit 1; }; \
	$(BIN)/python -c "import vaegrid, torch, optuna" && touch $(STAMP) && \
	echo "make: installed in $$(( $$(date +%s) - start )) s; the command is $(BIN)/vaegrid"

install: $(STAMP)

# Refresh the lock: resolve pyproject.toml's ranges in a fresh venv and freeze every version.
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	{ echo "# Made by 'make lock' on $$(uname -sm), Python $$(.lock-venv/bin/python -V | cut -d' ' -f2)."; \
	  echo "# PyPI's torch for Linux x86_64 is the CUDA build: it runs on the CPU too, so this one"; \
	  echo "# lock serves CPU and CUDA machines. Refresh it with 'make lock'."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^vaegrid'; } > $(LOCK)
	rm -rf .lock-venv

# The fast suite (the README's test command), on every core (pytest-xdist); `make test-all`
# adds the slow end-to-end tests.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n auto

# The slow end-to-end tests: kill -9 and resume, K workers per device, 1 vs 2 workers, a
# real Slurm. Two test files at a time (pytest-xdist, a file per worker): the Slurm file,
# mostly waiting on walltimes, runs beside the others.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q -n 2 --dist loadfile --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# The docs site into site/: the reference pages are generated from the code (docs/hooks.py);
# a broken link or reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check vaegrid tests bench docs/hooks.py
	$(BIN)/ruff format --check vaegrid tests bench docs/hooks.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python bench/bench_trial.py
	$(BIN)/python bench/bench_nll.py

# Load test of the study database (SQLite, PostgreSQL 15) and the driver's overhead per trial;
# then each of a worker's store calls alone (client CPU, wall, statements).
bench-store: $(STAMP)
	$(BIN)/python bench/load_store.py
	$(BIN)/python bench/store_ops.py

# One driver and one PostgreSQL (PgBouncer in front past 20 worker processes) against N
# simulated slots on Dask: occupancy, hand-overs/s, epoch rows/s, commit p99, driver CPU a
# trial (bench/scale.py, about 10 minutes); then status, report and vaegrid.load on a study
# of 100,000 generated trials (bench/readers.py, about 10 minutes). Not part of CI.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py --slots 10 --trial-seconds 5 --epochs 5
	$(BIN)/python bench/scale.py --slots 100 --trial-seconds 5 --epochs 5
	$(BIN)/python bench/scale.py --slots 200 --trial-seconds 5 --epochs 5
	$(BIN)/python bench/scale.py --slots 1000 --trial-seconds 30 --epochs 10 --waves 2
	$(BIN)/python bench/readers.py --trials 100000

# Bit-identity against another checkout: `make identity BASE=../other-checkout` runs the
# smoke, halving and binarized smoke studies with both and compares every row bit for bit.
identity: $(STAMP)
	bench/identity.sh $(BASE)

# Sweep the seed study (resuming whatever is already there), then rank, test and export.
# A sweep with failed trials exits 1: the report is still made from what completed.
grid: $(STAMP)
	$(BIN)/vaegrid run $(STUDY) --results $(RESULTS) || [ $$? -eq 1 ]
	$(BIN)/vaegrid report $(RESULTS)/$$($(BIN)/python -c \
	  "from vaegrid.study.load import load_study; print(load_study('$(STUDY)').name)")

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .mypy_cache .ruff_cache
