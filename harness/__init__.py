"""Test and benchmark support, not shipped: private redis-server and Prometheus, `llm-router`
processes, one `wait_until`, the simulator's admin calls, and the demo (`python -m harness.demo`)."""
