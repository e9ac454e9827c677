"""Helpers shared by test files: test files import from here (or tests/tolerances.py), never from
each other or from a conftest."""
