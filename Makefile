# exfilwatch: `make demo` runs the main job, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean java chromium

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,web]'
	touch $(STAMP)

# The tests also run every Spark-ready detection on PySpark, which needs Java 17+.
java:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless)

# The console's browser tests drive Debian's Chromium (Playwright's own browser download is not used).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,web,spark]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/exfilwatch demo --out demo-out

test: $(TEST_STAMP) java chromium
	$(BIN)/lint-imports
	$(BIN)/exfilwatch detections lint
	$(BIN)/exfilwatch test
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_network.py

clean:
	rm -rf demo-out .exfilwatch .pytest_cache .hypothesis
