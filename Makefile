# The front door. `make help` lists the targets. Stages are cached by content: a target whose
# inputs, parameters and code did not change prints `<stage>: cached` and does nothing.
#
#   make all                          # fresh clone -> submissions/images.zip (offline, CPU)
#   make fid                          # local FID of the submission -> data/score/score.json
#   make train SET="train.kimg=80"    # override parameters without editing params.yaml
#   make train GPUS=2                 # DDP through torchrun

PYTHON ?= python3
VENV ?= .venv
# ENV=system: use $(PYTHON) and the packages already installed (a Kaggle or Colab kernel, a
# conda env): no .venv, no pip; `check-env` says what is missing. Default: a pinned .venv.
ENV ?= venv
PARAMS ?= params.yaml
SET ?=
GPUS ?= 1
NODES ?= 1
ARGS ?=
ifeq ($(ENV),system)
PY := $(PYTHON)
STAMP := check-env
else ifeq ($(ENV),venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
else
$(error ENV is '$(ENV)'; allowed: venv (a pinned .venv, the default) or system (the installed \
  Python and packages))
endif
STAGES := fetch crop pad augment generate package score

# SET and ARGS reach the CLI through the environment, exactly as typed: make's $(value ...) does
# not expand them and no shell parses them (a quote, a backtick or $5 in a value stays itself).
PIPELINE_TARGETS := all fid $(STAGES) train status report export interpolate runs \
                    submissions
$(PIPELINE_TARGETS): export PIPELINE_SET = $(value SET)
$(PIPELINE_TARGETS): export PIPELINE_ARGS = $(value ARGS)
RUN = $(PY) -m pipeline run --params $(PARAMS)
# GPUS=N / NODES=M: the same command on N processes a node (DDP training; generation and scoring
# split their images by rank).
TORCHRUN = $(PY) -m torch.distributed.run --nnodes=$(NODES) --nproc_per_node=$(GPUS) \
           $(TORCHRUN_ARGS) -m pipeline run --params $(PARAMS)

.DEFAULT_GOAL := help
.PHONY: help all fid test test-fast $(STAGES) train status ingest-report params readme bench report \
        lint clean clean-all env check-env export interpolate runs submissions lock

help: ## list every target with one line
	@grep -hE '^[$$()a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/^[$$](STAGES)/<stage>/' | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo "  <stage> is one of: $(STAGES) (train: see above)"

env: $(STAMP) ## create .venv with the pinned dependencies (done by every target)

ifeq ($(ENV),venv)
# Every dependency at the version requirements.lock pins (made by pip-tools: `make lock`).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@
endif

check-env: ## ENV=system: is everything the pipeline imports installed here? (names what is not)
	@$(PY) -m pipeline.core.environment

all: $(STAMP) ## every stage up to submissions/images.zip (10,000 PNGs, validated)
ifeq ($(GPUS)$(NODES),11)
	$(RUN) package
else
	$(MAKE) --no-print-directory train
	$(TORCHRUN) generate
	$(RUN) package
endif

fid: $(STAMP) ## local score (FID, KID, precision/recall, MiFID) -> data/score/score.json
ifeq ($(GPUS)$(NODES),11)
	$(RUN) score
else
	$(MAKE) --no-print-directory train
	$(TORCHRUN) score
endif

$(STAGES): $(STAMP) ## run one stage (and what it needs)
	$(RUN) $@

train: $(STAMP) ## train the GAN (GPUS=N NODES=M launch torchrun DDP)
ifeq ($(GPUS)$(NODES),11)
	$(RUN) train
else
	$(RUN) augment
	$(TORCHRUN) train
endif

export: $(STAMP) ## data/export/: the generator as TorchScript (+ ONNX), usable without us
	$(PY) -m pipeline export --params $(PARAMS)

interpolate: $(STAMP) ## data/export/interpolation.gif: a looping latent walk of the generator
	$(PY) -m pipeline interpolate --params $(PARAMS)

runs: $(STAMP) ## every training run: changed settings, kimg, time, best score, grids
	@$(PY) -m pipeline runs --params $(PARAMS)

submissions: $(STAMP) ## every kept submission zip: local scores, Kaggle competition and score
	@$(PY) -m pipeline submissions --params $(PARAMS)

status: $(STAMP) ## each stage: cached, stale (and why) or missing
	@$(PY) -m pipeline status --params $(PARAMS)

ingest-report: status ## counts of kept and rejected images by reason

report: $(STAMP) ## data/report/index.html: stages, dataset, training curves, samples, scores
	@$(PY) -m pipeline report --params $(PARAMS)

params: $(STAMP) ## every parameter with its default and meaning
	@$(PY) -m pipeline params

# Two pytest-xdist workers (tests/conftest.py says why); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP) ## the whole test suite (9 to 11 minutes on 2 CPU cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

test-fast: $(STAMP) ## the tests not marked slow
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(ARGS)

bench: $(STAMP) ## every benchmark against its baseline at a small size: one table of ratios
	$(PY) bench/run_all.py

lock: $(STAMP) ## refresh requirements.lock from pyproject.toml (pip-tools; needs the index)
	$(PY) -m piptools compile --quiet --strip-extras --extra dev --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.lock pyproject.toml

readme: $(STAMP) ## regenerate the parameter table in README.md from pipeline/core/config.py
	$(PY) -m pipeline params --update-readme README.md

lint: $(STAMP) ## ruff
	$(PY) -m ruff check pipeline stages tests bench

clean: ## delete rebuildable stage outputs; keeps raw data, runs, score history, submissions
	rm -rf data/crop data/pack data/train data/generated data/report
	rm -rf data/.*.partial-* data/.*.old data/.*.rank*
	[ ! -d data/clean ] || find data/clean -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

clean-all: ## also data/raw, runs (checkpoints), scores, submissions, downloads, caches, .venv
	@test "$(CONFIRM)" = yes || { echo "make clean-all deletes data/ (raw data, training runs" \
	  "and their checkpoints, the score history, downloads, caches), submissions/ and .venv;" \
	  "to go ahead: make clean-all CONFIRM=yes"; exit 2; }
	find data -mindepth 1 -maxdepth 1 ! -name raw ! -name clean -exec rm -rf {} +
	find data/raw data/clean submissions -mindepth 1 ! -name .gitkeep -exec rm -rf {} + \
	  2>/dev/null || true
	rm -rf $(VENV)
