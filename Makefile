# relaxbench: the two commands of the README, and a few helpers.
#   make reproduce   set up, then run the default CPU-scale reproduction (snakemake) -> reports/default/index.html
#   make test        set up, then run the whole test suite
SHELL := /bin/bash
VENV = $(shell ./scripts/setup.sh)
CORES ?= all
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: setup reproduce test test-fast bench lint

setup:
	@echo "venv: $(VENV)"

reproduce:
	@venv="$(VENV)"; export PATH="$$venv/bin:$$PATH"; \
	snakemake --cores $(CORES) --configfile $(CONFIG) --workflow-profile workflow/profiles/default

test:
	@venv="$(VENV)"; export PATH="$$venv/bin:$$PATH"; \
	python -m pytest $(PYTEST_ARGS)

test-fast:
	@venv="$(VENV)"; export PATH="$$venv/bin:$$PATH"; \
	python -m pytest -m "not slow" $(PYTEST_ARGS)

bench:
	@venv="$(VENV)"; export PATH="$$venv/bin:$$PATH"; \
	for b in benchmarks/bench_*.py; do python $$b || exit 1; done

lint:
	@venv="$(VENV)"; export PATH="$$venv/bin:$$PATH"; \
	snakemake --lint --configfile configs/smoke.yaml
