"""Generated KServe v2 (Open Inference Protocol) gRPC code; regenerate with `python proto/generate.py`."""
