# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-console test test-fast docs chaos lint format bench redis-server prometheus alertmanager docker-compose node chromium clean

$(BIN)/llm-router: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# $(call need,BINARIES,PACKAGE): the binaries on PATH; if missing, apt-get installs the Debian
# package when run as root, else one line says what to install. (Only this needs root.)
define need
	@missing=; for b in $(1); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    echo "installing $(2) (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	  else \
	    echo "missing:$$missing: install the Debian package $(2) (sudo apt-get install $(2)); make test needs root only for that" >&2; \
	    exit 1; \
	  fi; \
	fi
endef

# redis-server for the private servers of the demo, the tests and the benchmarks.
redis-server:
	$(call need,redis-server,redis-server)

# Prometheus (Debian's package, with promtool) for the observability and deploy tests.
prometheus:
	$(call need,prometheus promtool,prometheus)

# Node.js and npm for the ingress's Node clients (fetch, and the `openai` npm package, which the test npm-installs).
node:
	$(call need,node npm,nodejs npm)

# Alertmanager (Debian's package) for the alert-delivery test: Prometheus fires at it, it posts to a webhook.
alertmanager:
	$(call need,prometheus-alertmanager,prometheus-alertmanager)

# docker-compose (Debian's, 1.29) only validates deploy/docker-compose.yml in the tests: no daemon, no images.
docker-compose:
	$(call need,docker-compose,docker-compose)

# Debian's Chromium for the console's browser tests (Playwright drives /usr/bin/chromium: it downloads no browser here).
chromium:
	$(call need,chromium,chromium)

demo: $(BIN)/llm-router redis-server
	$(BIN)/python -m harness.demo

# The demo, then its servers kept up with the operator console: prints its URL and a token; Ctrl-C stops.
demo-console: $(BIN)/llm-router redis-server
	$(BIN)/python -m harness.demo --console

# ruff (format and lint) and mypy over the whole tree; `make format` applies ruff's fixes.
lint: $(BIN)/llm-router
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(BIN)/llm-router
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint docs redis-server prometheus alertmanager docker-compose node chromium
	$(BIN)/pytest -q

# The docs site (docs/, mkdocs.yml) into .site/, strict: a broken link or anchor fails. Its
# reference tables are generated from the code as it builds (docs/gen/). `$(BIN)/mkdocs serve`
# previews it at http://127.0.0.1:8000 while you edit.
docs: $(BIN)/llm-router
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The fast part: unit tests and the in-process Redis ones (tests/unit, tests/integration; no
# process fleets, no CLI runs, no deploy checks), about a minute. `make test` runs everything.
test-fast: $(BIN)/llm-router redis-server
	$(BIN)/pytest -q tests/unit tests/integration

# Redis failover under load: master + replica + 3 sentinels, several workers (slow; prints its figures).
chaos: $(BIN)/llm-router redis-server
	$(BIN)/pytest -q -s -m failover tests/e2e/test_failover.py

bench: $(BIN)/llm-router redis-server
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.inflight
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.ratelimit
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.priority
	$(BIN)/python -m bench.script_calls
	$(BIN)/python -m bench.spend_records
	$(BIN)/python -m bench.stream_events
	$(BIN)/python -m bench.cache
	$(BIN)/python -m bench.budgets
	$(BIN)/python -m bench.ingress
	$(BIN)/python -m bench.slow_clients
	$(BIN)/python -m bench.fairshare

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .site
