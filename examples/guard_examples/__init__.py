"""Reproducible recipes for the demo models shipped with guard."""
