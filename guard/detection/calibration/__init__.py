"""Calibration that holds on the host that serves.

Thresholds are floats computed from clean scores, and the scores depend on the numerics of the
runtime that computes them: ONNX Runtime's INT8 kernels round differently per CPU instruction set
and per version, torch's CPU kernels too. So a model directory ships its clean calibration
references (references.py) and the runtime fingerprint it was calibrated under (fingerprint.py);
where the serving host's fingerprint differs, the thresholds and the ensemble's statistics are
derived again from those references, on that host, by the same code `guard calibrate` runs
(derive.py), before the model reports ready.
"""
