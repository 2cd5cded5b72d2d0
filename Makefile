# smoke: train a smoking classifier, package it, serve it with TorchServe, load-test it.
# Every target installs what it needs first (`setup`), so each works on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
RUN ?= runs/latest
IMG ?=
QUICK ?=

.PHONY: help setup java data train train-real archive serve stop predict demo test test-fast \
	lint format loadtest bench clean check-served

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

java:
	@scripts/ensure_java.sh

setup: $(STAMP) java ## create .venv with the pinned requirements and make sure Java >= 11 is present

data: setup ## generate the embedded synthetic photos into data/synthetic
	$(PY) -m training.synthetic --out data/synthetic

train: data ## train the default config on the synthetic photos and export it
	$(PY) -m training.train --config training/configs/default.yaml

train-real: setup ## train the real-photo recipe: make train-real DATA=path/to/photos
	@test -n "$(DATA)" || { echo "usage: make train-real DATA=path/to/photos"; exit 2; }
	$(PY) -m training.train --config training/configs/real.yaml data.root=$(DATA)

archive: setup ## build model_store/smoke.mar from a run (RUN=runs/<run>, default runs/latest)
	$(PY) -m scripts.archive --run $(RUN)

check-served: setup ## check that TorchServe answers every evaluated photo like the run did (RUN=)
	$(PY) -m scripts.check_served --run $(RUN)

serve: setup ## start TorchServe in the background and wait until the model is ready
	$(PY) -m scripts.server start

stop: setup ## stop TorchServe
	$(PY) -m scripts.server stop

predict: setup ## send one photo to the running server: make predict IMG=photo.jpg
	@test -n "$(IMG)" || { echo "usage: make predict IMG=path/to/photo.jpg"; exit 2; }
	$(PY) -m scripts.server predict $(IMG)

demo: setup ## end to end on the embedded data: generate, train, export, archive, serve, predict
	$(PY) -m scripts.demo

test: setup ## run the whole test suite
	$(PY) -m pytest

test-fast: setup ## run the tests that need no server and no long training
	$(PY) -m pytest -m "not slow"

lint: setup ## ruff format check and lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup ## reformat the code with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

loadtest: setup ## headless Locust run against the running server; reports in reports/loadtest/
	$(PY) -m loadtest.run

bench: setup ## benchmark model, handler, TorchServe and the stock handler; QUICK=1 for a short run
	$(PY) -m scripts.bench $(if $(QUICK),--quick,)

clean: ## remove generated data, runs, reports and archives (keeps .venv)
	rm -rf data runs reports logs model_store/*.mar wandb key_file.json
