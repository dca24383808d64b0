# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench redis-server prometheus clean

$(BIN)/llm-router: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# redis-server must exist for the tests' private server; sim/redis_server.py installs it with apt-get if missing.
redis-server: $(BIN)/llm-router
	@$(BIN)/python -c "from sim.redis_server import redis_server_binary; redis_server_binary(install=True)"

# Prometheus (Debian's package, with promtool) for the observability tests; installed if missing.
prometheus: $(BIN)/llm-router
	@$(BIN)/python -c "from sim.prometheus_server import prometheus_binaries; prometheus_binaries(install=True)"

demo: $(BIN)/llm-router
	$(BIN)/python -m producers.demo

test: $(BIN)/llm-router redis-server prometheus
	$(BIN)/pytest -q

bench: $(BIN)/llm-router redis-server
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.ratelimit

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
