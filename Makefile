# The user interface of the project: `make help` lists the targets.
# Every target takes CONFIG=path/to/config.yml and ARGS="key.sub=value ..." (config overrides);
# stage2, submit, evaluate and notebooks take FROM=runs/<run> (default: the latest finished
# run), and then read that run's own config.yml unless CONFIG= is given;
# stage1 and stage2 take RESUME=runs/<run> to finish an interrupted run.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?=
ARGS ?=
FROM ?=
RESUME ?=
SYNTH ?=
DATA_ARGS ?=
DEMO_CONFIG ?= configs/demo.yml
FROM_ARG = $(if $(FROM),--from $(FROM),)
RESUME_ARG = $(if $(RESUME),--resume $(RESUME),)
CONFIG_ARG = $(if $(CONFIG),--config $(CONFIG),)
# The demo's synthetic data set: all seven machines, small sections (see README "Demo").
DEMO_SYNTH ?= --n-source 40 --n-test 60 --workers 2

.DEFAULT_GOAL := help
.PHONY: help install synth index data cache stage1 stage2 submit evaluate demo lint test test-fast bench bench-gpu bench-gpu-check bench-scale tensorboard notebooks clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "Variables: CONFIG=file.yml  ARGS=\"key.sub=value ...\"  FROM=runs/NNN-stepN  RESUME=runs/NNN-stepN"
	@echo "           DATA_ARGS=\"--machines fan,valve --keep-archives\" (make data: python -m asd.download --help)"
	@echo "           SYNTH=\"--n-source 40 --n-test 60 --machines fan,valve\" (make synth: python -m asd.synthetic --help)"

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip<24.1"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned requirements (pip<24.1 for Catalyst)

synth: install ## Write the synthetic data set into data.root (SYNTH="--layout dcase2021|dcase2022|dcase2023|folders")
	$(PY) -m asd.synthetic $(CONFIG_ARG) $(SYNTH) $(ARGS)

index: install ## Print the clip counts of data.root per machine, section, domain, split, label
	$(PY) -m asd.index $(CONFIG_ARG) $(ARGS)

data: install ## Download and unpack the DCASE Task 2 data of data.year (2021-2026, Zenodo) into data.root
	$(PY) -m asd.download $(CONFIG_ARG) $(DATA_ARGS) $(ARGS)

cache: install ## Build (or reuse) the log-mel feature cache of data.root
	$(PY) -m asd.cache $(CONFIG_ARG) $(ARGS)

stage1: install ## Step 1: train on source clips (150 epochs); prints the run folder
	$(PY) -m runners.stage1 $(CONFIG_ARG) $(RESUME_ARG) $(ARGS)

stage2: install ## Step 2: fine-tune the last stage on source x target (5000 iterations); FROM=
	$(PY) -m runners.stage2 $(CONFIG_ARG) $(FROM_ARG) $(RESUME_ARG) $(ARGS)

submit: install ## Fit both back-ends (GMM/OCSVM, kNN), write the challenge CSVs of detectors.backend; FROM=
	$(PY) -m asd.submit $(CONFIG_ARG) $(FROM_ARG) $(ARGS)

evaluate: install ## AUC / pAUC tables of a submitted run against the labels; FROM=
	$(PY) -m asd.evaluate $(CONFIG_ARG) $(FROM_ARG) $(ARGS)

demo: install ## The whole pipeline on generated data with configs/demo.yml, then the results table
	$(MAKE) --no-print-directory synth SYNTH="$(DEMO_SYNTH)" CONFIG=$(DEMO_CONFIG)
	$(MAKE) --no-print-directory stage1 stage2 submit evaluate CONFIG=$(DEMO_CONFIG)
	@run=$$($(PY) -c "from asd.infra.config import load_config; from asd.infra.runs import latest_run; print(latest_run(load_config('$(DEMO_CONFIG)').runs.dir, 'stage2'))") || exit 2; \
	root=$$($(PY) -c "from asd.infra.config import load_config; print(load_config('$(DEMO_CONFIG)').data.root)"); \
	echo; \
	echo "The demo's results are in $$run: results.md (every table, and how often the decisions"; \
	echo "flag normal clips), figures/ (ROC curves). README.md 'Demo results' says what they show."; \
	echo "Next (each takes the latest run, $$run, and its own config):"; \
	echo "  make notebooks      # training curves, embeddings, scores, errors: $$run/notebooks/*.html"; \
	echo "  make tensorboard    # the training logs of every run, on 127.0.0.1:6006"; \
	echo "  make index CONFIG=$(DEMO_CONFIG)   # the demo data's clips per machine, section and domain"; \
	echo "  $(PY) -m asd.score $$run $$root/dev_data/fan/source_test/section_00_source_test_anomaly_0000.wav"

lint: install ## Check layout and the readability rules of pyproject.toml (ruff format + ruff check)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: install ## Run every test (the CI command)
	$(PY) -m pytest -q -ra -n auto --dist worksteal tests

test-fast: install ## Run the tests without the slow end-to-end ones
	$(PY) -m pytest -q -ra -n auto --dist worksteal tests -m "not slow"

bench: install ## Speed of the feature cache, training data path, optimiser step and embedding against references
	$(PY) -m bench.features
	$(PY) -m bench.train --memory
	$(PY) -m bench.optim
	$(PY) -m bench.embed

bench-gpu: install ## Step 1 on one GPU: samples/s of gpu, amp bf16 and fp16, memory, run times, loss vs CPU
	$(PY) -m bench.gpu $(ARGS)

bench-gpu-check: install ## On a GPU: bench-gpu, host waits a step under CUDA's sync debug mode, ddp_amp kill and resume (docs/gpu.md)
	PY=$(PY) bash bench/gpu_check.sh

bench-scale: install ## Time and memory of every step at 10/30/100 % of a full-size data set (ARGS=)
	$(PY) -m bench.scale $(CONFIG_ARG) $(ARGS)

tensorboard: install ## Serve the TensorBoard logs of the runs in runs.dir on localhost
	@dir=$$($(PY) -c "from asd.infra.config import load_config; print(load_config('$(or $(CONFIG),config.yml)').runs.dir)") || exit 2; \
	if ! ls -d "$$dir"/*/logs >/dev/null 2>&1; then \
		echo "no run with logs in $$dir yet: make demo or make stage1 writes them"; exit 1; fi; \
	echo "serving the logs of $$(ls -d "$$dir"/*/logs | wc -l) runs in $$dir"; \
	$(PY) -m tensorboard.main --logdir "$$dir" --host 127.0.0.1

notebooks: install ## Execute the notebooks against a run (FROM=) and write HTML copies into it
	$(PY) -m asd.notebooks $(CONFIG_ARG) $(FROM_ARG) $(ARGS)

clean: ## Remove caches of Python and pytest (not data, runs or .venv)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .pytest_cache
