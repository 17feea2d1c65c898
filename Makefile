# `make test` creates .venv/ when missing, installs Hare with its test extras on the CPU torch wheel, runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hare-installed

.PHONY: test venv clean e2e demo

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# hare-mini, the model inside the package, speaking with its bundled voice: writes demo.wav
DEMO_TEXT := Hello! This is Hare, a small text to speech model that was trained on two processor cores.
demo: $(STAMP)
	$(VENV)/bin/hare speak "$(DEMO_TEXT)" -o demo.wav --seed 0

# The whole pipeline at official size, offline: random official-size weights in the official file layout.
E2E_TEXT := The expressiveness of autoregressive transformers is literally nuts! I absolutely adore them.
e2e: $(STAMP)
	mkdir -p runs
	$(PY) bench/random_official.py bench/.cache/official
	$(VENV)/bin/hare speak "$(E2E_TEXT)" --models-dir bench/.cache/official --voice random \
		--preset ultra_fast --max-codes 100 --seed 0 --report runs/e2e.json -o runs/e2e.wav

clean:
	rm -rf $(VENV) build *.egg-info
