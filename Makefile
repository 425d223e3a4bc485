# fcnseg: every target creates .venv from requirements.txt when it is missing or stale.
PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

# The embedded default: synthetic road scenes generated in code, random encoder (no download).
# Quick (a few minutes) and for synthetic scenes only: it is no road detector for real images.
RUN_DIR    ?= runs/fcn8s
TRAIN_ARGS ?= --dataset synthetic --encoder-weights none --image-size 96 320 \
              --num-synthetic 160 --epochs 3 --batch-size 4 --learning-rate 3e-4
# The measured KITTI road recipe (docs/results.md, "KITTI road from scratch in an hour"): from
# scratch, FCN-8s, fc width 512, images at 384x1248 (KITTI's ~375x1242, no shrinking), trained
# on random 288x960 windows (scale 0.8-1.25, flips, colour) in batches of 2, 10 epochs of 250
# steps, Adam 3e-4 poly, L2 5e-4 on kernels, clip norm 1, seed 0; bfloat16 where the CPU has
# AMX or AVX512-BF16 (under an hour on 2 such cores; float32 elsewhere: 14 h on 2 AVX2 cores).
# ENCODER_WEIGHTS=path/to/vgg16.h5 (or imagenet, a Keras download) is an opt-in, not the
# measured recipe. KITTI_EXTRA adds flags.
KITTI_ROOT ?= data/data_road
KITTI_RUN_DIR ?= runs/kitti
KITTI_MODEL ?= kitti_road
ENCODER_WEIGHTS ?= none
KITTI_EXTRA ?=
KITTI_ARGS ?= --image-size 384 1248 --crop-size 288 960 --variant fcn8s \
              --encoder-weights $(ENCODER_WEIGHTS) --fc-width 512 --batch-size 2 --epochs 10 \
              --steps-per-epoch 250 --learning-rate 3e-4 --lr-schedule poly --weight-decay 5e-4 \
              --clip-norm 1.0 --mixed-precision auto --seed 0 $(KITTI_EXTRA)
MODEL_BASE ?= models
MODEL_NAME ?= fcn8s
EXPORT_ARGS ?=
DATA_DIR   ?= data
PYTEST_ARGS ?=

export PYTHONPATH := $(CURDIR)

.PHONY: venv train train-kitti export evaluate test test-slow browser mutation serve bench data-kitti data-coco clean dask-cluster

venv: $(STAMP)

$(STAMP): requirements.txt requirements-aws.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# s3:// (Beam's [aws] extra) and the local S3 server the tests use
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m model.train --run-dir $(RUN_DIR) $(TRAIN_ARGS)

# Train, export (inference at the training size), then score the export on the validation
# pairs of the training split (the same seed and fraction): perspective and bird's-eye tables.
train-kitti: $(STAMP)
	$(PY) -m model.train --dataset kitti --data-root $(KITTI_ROOT) --task road \
		--run-dir $(KITTI_RUN_DIR) $(KITTI_ARGS)
	$(MAKE) export RUN_DIR=$(KITTI_RUN_DIR) MODEL_NAME=$(KITTI_MODEL)
	$(PY) -m model.evaluate --model-dir $(MODEL_BASE)/$(KITTI_MODEL) --dataset kitti \
		--split val --data-root $(KITTI_ROOT) --output $(KITTI_RUN_DIR)/eval_export_val

export: $(STAMP)
	$(PY) -m export --run-dir $(RUN_DIR) --model-dir $(MODEL_BASE)/$(MODEL_NAME) $(EXPORT_ARGS)

evaluate: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(RUN_DIR)/checkpoints/best.keras

# The suite (under 15 minutes on 2 cores). The few long tests are marked slow: make
# test-slow runs them; CI (.ci/run) runs both.
test: $(STAMP) browser
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) browser
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Debian's chromium and chromium-driver for the report pages' browser tests, when missing.
browser:
	@tools/install_browser.sh

# Plant known bugs one at a time in a temporary copy and show the tests fail for each
# (docs/testing.md has the table).
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(PY) tools/mutation.py $(MUTATION_ARGS)

# Real TF Serving in Docker when an engine runs; otherwise the development server
# (tfserving_dev: tests and local work, not production). Flags are --name=value, as
# tensorflow_model_server takes them.
serve: $(STAMP)
	@if docker info >/dev/null 2>&1; then \
		docker compose -f serving/docker-compose.yml up; \
	else \
		echo "no Docker engine: serving $(MODEL_BASE)/$(MODEL_NAME) with tfserving_dev (for development and tests, not production)"; \
		$(PY) -m tfserving_dev --port=8500 --rest_api_port=8501 --model_name=$(MODEL_NAME) \
			--model_base_path=$(abspath $(MODEL_BASE))/$(MODEL_NAME); \
	fi

# A local Dask cluster for `--runner DaskRunner`: a scheduler and $(DASK_WORKERS) workers on
# 127.0.0.1 (docs/beam.md, "Dask"); prints the address; `python tools/dask_cluster.py stop`.
DASK_WORKERS ?= 2
DASK_ARGS ?= --memory-limit 6GiB
dask-cluster: $(STAMP)
	$(PY) tools/dask_cluster.py start --workers $(DASK_WORKERS) $(DASK_ARGS)

BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m benchmarks --model-dir $(MODEL_BASE)/$(MODEL_NAME) --output bench_out $(BENCH_ARGS)

data-kitti: $(STAMP)
	$(PY) -m model.data.download kitti --output $(DATA_DIR) $(DATA_ARGS)

data-coco: $(STAMP)
	$(PY) -m model.data.download coco --output $(DATA_DIR)/coco $(DATA_ARGS)

clean:
	rm -rf runs models cache bench_out .pytest_cache
