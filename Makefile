# One command surface for people and CI. Needs Python 3.11+, Java 17+ and Maven on PATH.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-unit test-integration lint typecheck bench broker-up broker-down clean

$(STAMP): pyproject.toml constraints.txt
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "biopriv needs Python 3.11+, found " + sys.version.split()[0])'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench,dev]'
	@touch $(STAMP)

install: $(STAMP)  ## venv and every dependency (runtime, tests, benchmarks)

demo: install  ## broker up, worker, replay generated recordings for several devices, print releases and latency
	$(BIN)/biopriv demo

# The 5-minute broker outage test (marker slow) mostly waits: it runs beside the tests that need no
# broker, then the other integration tests run on the broker it leaves behind (or starts again).
test: install  ## lint, types, then every test: unit, statistical audits, shared-data validation, integration on a live broker
	$(BIN)/ruff check pipeline connectors tests benchmarks
	$(BIN)/mypy
	@mkdir -p .biopriv
	@echo "make test: the broker-outage test (-m slow) runs in the background, log .biopriv/test-slow.log"
	@$(BIN)/python -m pytest -m slow -p no:cacheprovider > .biopriv/test-slow.log 2>&1 & slow=$$!; \
	$(BIN)/python -m pytest -m "not integration"; unit=$$?; \
	wait $$slow; outage=$$?; echo "== pytest -m slow"; cat .biopriv/test-slow.log; \
	test $$unit -eq 0 && test $$outage -eq 0
	$(BIN)/python -m pytest -m "integration and not slow"

test-unit: install
	$(BIN)/python -m pytest -m "not integration"

test-integration: install
	$(BIN)/python -m pytest -m integration

lint: install
	$(BIN)/ruff check pipeline connectors tests benchmarks

typecheck: install
	$(BIN)/mypy

bench: install  ## short benchmark run (broker included), prints the summary
	$(BIN)/biopriv bench

broker-up: install
	$(BIN)/biopriv kafka up

broker-down:
	bash deploy/kafka/local.sh down

clean:
	-bash deploy/kafka/local.sh down
	-bash deploy/kafka/local.sh down --secure
	rm -rf $(VENV) .kafka .kafka-secure .biopriv demo-data build *.egg-info .pytest_cache .hypothesis
