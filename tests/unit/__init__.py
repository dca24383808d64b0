"""Tests: unit (the kinds are in .ci/restructure.py)."""
