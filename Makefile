# face_pipeline: common tasks. Variables: LIMIT, PERSON_THRESHOLD, EPOCHS, PHOTOS.
PYTHON ?= .venv/bin/python
FP := $(PYTHON) -m face_pipeline.cli
SHARED_MINI := $(abspath ../shared/datasets/lfw-mini)
# The demo photos: FACE_PHOTOS_DIR if set, else lfw-mini beside the repo.
PHOTOS ?= $(or $(FACE_PHOTOS_DIR),$(wildcard $(SHARED_MINI)))
export FACE_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(FACE_DATA_DIR)/dagster

.PHONY: install demo test test-fast lint faces-backfill faces-stats faces-cluster-dual faces-cluster faces-assign dev serve bench

.venv/bin/python:
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip

install: .venv/bin/python  ## torch first (CPU wheel), then the project with its test and evaluation tools
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e ".[test,eval]"

demo: install  ## set up and run the main job on the embedded defaults over $(PHOTOS)
	@test -n "$(PHOTOS)" || { echo "no photos: set FACE_PHOTOS_DIR or PHOTOS=/path"; exit 2; }
	FACE_PHOTOS_DIR="$(PHOTOS)" $(FP) faces backfill
	$(FP) faces cluster-dual
	$(FP) faces stats

test: install  ## install (idempotent) and run the whole suite, as CI does
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(PYTHON) -m ruff check face_pipeline face_pipeline_eval face_pipeline_tests benchmarks
	$(PYTHON) -m ruff format --check face_pipeline face_pipeline_eval face_pipeline_tests benchmarks
	$(PYTHON) -m mypy face_pipeline face_pipeline_eval

faces-backfill:
	FACE_PHOTOS_DIR="$(PHOTOS)" $(FP) faces backfill $(if $(LIMIT),--limit $(LIMIT),)

faces-stats:
	$(FP) faces stats

faces-cluster-dual:  ## PERSON_THRESHOLD= (cosine; default: the embedding space's own), UNKNOWN_METHOD=
	$(FP) faces cluster-dual $(if $(PERSON_THRESHOLD),--person-threshold $(PERSON_THRESHOLD),) \
		$(if $(UNKNOWN_METHOD),--unknown-method $(UNKNOWN_METHOD),)

faces-cluster:  ## unsupervised only (the seed's old system)
	$(FP) faces cluster $(if $(UNKNOWN_METHOD),--unknown-method $(UNKNOWN_METHOD),)

faces-assign:  ## supervised only
	$(FP) faces assign $(if $(PERSON_THRESHOLD),--person-threshold $(PERSON_THRESHOLD),)

# The instance file in DAGSTER_HOME: dagster.yaml (SQLite), or dagster-postgres.yaml when DAGSTER_PG_URL is set.
dev:  ## Dagster UI (webserver + daemon) on http://127.0.0.1:3000 with the CLI's DAGSTER_HOME
	$(PYTHON) -c "from face_pipeline.defs.runner import dagster_home; from face_pipeline.settings import load_settings; print('DAGSTER_HOME', dagster_home(load_settings()))"
	FACE_PHOTOS_DIR="$(PHOTOS)" .venv/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

serve:  ## labelling API and review page on http://127.0.0.1:8000
	$(FP) serve

bench:
	$(PYTHON) benchmarks/ingest.py

.PHONY: faces-train-person-matching faces-reassign-smart

faces-train-person-matching:  ## EPOCHS= (default FACE_TRAINING_EPOCHS), MARGIN=: train a projection on the labels
	$(FP) faces train-matching $(if $(EPOCHS),--epochs $(EPOCHS),) $(if $(MARGIN),--margin $(MARGIN),)

faces-reassign-smart:  ## PERSON_THRESHOLD=: switch to the newest promoted checkpoint, then reassign everything
	$(FP) faces reassign --use-trained-model $(if $(PERSON_THRESHOLD),--person-threshold $(PERSON_THRESHOLD),)
