# `make serve` and `make test` bootstrap .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test proto proto-check models models-install mutation clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	# `guard evaluate` attacks with torchattacks, whose metadata pins requests~=2.25 (hence
	# urllib3<1.27) against tritonclient's urllib3>=2; it imports neither, so skip its pins.
	$(PY) -m pip install --quiet --no-deps 'torchattacks>=3.5'
	touch $(STAMP)

serve: $(STAMP)  ## serve the shipped demo model on 127.0.0.1:8001 (gRPC) and :8002 (/metrics)
	$(VENV)/bin/guard serve $(ARGS)

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest $(ARGS)

proto: $(STAMP)  ## regenerate guard/proto from proto/inference.proto
	$(PY) proto/generate.py

models: $(STAMP)  ## rebuild every shipped model in build/models-rebuild and report what differs (changes nothing shipped)
	$(PY) -m models.rebuild $(ARGS)

models-install: $(STAMP)  ## the same, then copy the rebuilt files that differ over the shipped ones
	$(PY) -m models.rebuild --install $(ARGS)

mutation: $(STAMP)  ## mutation score of the serving and detection core (slow: about an hour; scripts/mutation.py)
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) scripts/mutation.py $(ARGS)

proto-check: $(STAMP)
	$(PY) proto/generate.py --check

clean-venv:
	rm -rf $(VENV)
