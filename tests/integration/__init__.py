"""Tests: integration (the kinds are in .ci/restructure.py)."""
