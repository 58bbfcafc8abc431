"""Offline checks run before a model is served: trigger reverse-engineering (Neural Cleanse),
training-data scans (spectral signatures, activation clustering), a stability audit, and the
repository gate that refuses models whose last scan flagged them. See docs/scans.md."""
