# Every target sets up (or updates) the virtual environment in .venv/ first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench simulate figures clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build; never let a resolver pick another one.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## The main job: a whole federation on this machine.
demo: $(STAMP)
	$(BIN)/python -m federation.simulate --dataset breast_cancer --silos 3 --partition iid \
		--strategy fedavg --model logistic --rounds 10 --seed 0

## The whole test suite, with lint, type and import-rule checks.
test: $(STAMP) lint
	$(BIN)/python -m pytest --doctest-modules federation tests

lint: $(STAMP)
	$(BIN)/ruff check federation tests bench
	$(BIN)/ruff format --check federation tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/aggregate_bench.py

figures: $(STAMP)
	$(BIN)/python bench/figures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
