"""Recipes: one file per job, run from a checkout as ``python -m recipes.<name>`` (never installed)."""
