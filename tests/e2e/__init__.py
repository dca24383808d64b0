"""Tests: e2e (the kinds are in .ci/restructure.py)."""
