"""guard: a real-time inference guard gateway speaking the KServe v2 gRPC protocol.

Layers, each importing only those below it (enforced by import-linter, see pyproject.toml):

    guard.tools       command line, calibration, evaluation, offline scans
    guard.serving     gRPC server, data plane, batcher, runtime, policy, repository, metrics
    guard.detection   guard pipeline, detectors, squeezers, preprocessing, ensemble, thresholds
    guard.backends    what runs the protected model: ONNX Runtime, torch, a remote v2 server
    guard.protocol    wire types, tensors, codec, errors, config reading
"""

__version__ = "0.1.0"
