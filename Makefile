# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench redis-server prometheus docker-compose clean

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

# docker-compose (Debian's, 1.29) only validates deploy/docker-compose.yml in the tests: no daemon, no images.
docker-compose:
	@command -v docker-compose >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends docker-compose >/dev/null)

demo: $(BIN)/llm-router
	$(BIN)/python -m producers.demo

test: $(BIN)/llm-router redis-server prometheus docker-compose
	$(BIN)/pytest -q

bench: $(BIN)/llm-router redis-server
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.ratelimit

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
