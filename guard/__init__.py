"""guard: a real-time inference guard gateway speaking the KServe v2 gRPC protocol."""

__version__ = "0.1.0"
