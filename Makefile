# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench redis-server clean

$(BIN)/llm-router: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# redis-server must exist for the tests' private server (and the demo's, if REDIS_URL does not answer).
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

demo: $(BIN)/llm-router
	$(BIN)/python -m producers.demo

test: $(BIN)/llm-router redis-server
	$(BIN)/pytest -q

bench: $(BIN)/llm-router redis-server
	$(BIN)/python -m bench.dispatch

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
