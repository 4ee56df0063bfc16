# exfilwatch: `make demo` runs the main job, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,web]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exfilwatch demo --out demo-out

test: $(STAMP)
	$(BIN)/exfilwatch detections lint
	$(BIN)/exfilwatch test
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_network.py

clean:
	rm -rf demo-out .exfilwatch .pytest_cache .hypothesis
