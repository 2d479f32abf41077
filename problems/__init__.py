"""Runnable PDE problems (python -m problems.NAME)."""
