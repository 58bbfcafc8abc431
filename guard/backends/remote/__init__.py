"""The remote backend: a KServe v2 gRPC upstream (Triton, MLServer, KServe, another guard) runs the
model; the client, its circuit breaker and how batches are cut for the upstream's layout."""
