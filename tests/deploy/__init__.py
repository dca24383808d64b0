"""Tests: deploy (the kinds are in .ci/restructure.py)."""
