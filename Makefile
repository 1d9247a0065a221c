# relaxbench: the two commands of the README, and a few helpers.
#   make reproduce   set up, then run the default CPU-scale reproduction (snakemake) -> reports/default/index.html
#   make test        set up (with the SLURM test's system packages), then run the whole test suite
#   make style       ruff: formatting and lint (run by CI before the tests)
# Every target first runs scripts/setup.sh (builds the cached venv once; stops here if that fails).
SHELL := /bin/bash
CORES ?= all
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
ENV = venv="$$(./scripts/setup.sh)" || exit 1; export PATH="$$venv/bin:$$PATH";

.PHONY: setup reproduce test test-fast bench lint style

setup:
	@$(ENV) echo "venv: $$venv"

reproduce:
	@$(ENV) snakemake --cores $(CORES) --configfile $(CONFIG) --workflow-profile workflow/profiles/default

test:
	@export RELAXBENCH_TEST_PACKAGES=1; $(ENV) python -m pytest $(PYTEST_ARGS)

test-fast:
	@$(ENV) python -m pytest -m "not slow" $(PYTEST_ARGS)

bench:
	@$(ENV) for b in bench_step_time bench_data bench_cnn_export bench_vn_penalty; do python benchmarks/$$b.py || exit 1; done

style:
	@$(ENV) ruff format --check . && ruff check .

lint:
	@$(ENV) snakemake --lint --configfile configs/smoke.yaml
