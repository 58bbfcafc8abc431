"""Layer 4, serving: the gRPC server and its transport, the data plane (validation, deadlines,
policy, responses), the dynamic batcher, the per-model runtime, the model repository and its
configs, and the Prometheus metrics."""
