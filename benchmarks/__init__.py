"""Latency and throughput benchmarks (see benchmarks/README.md)."""
