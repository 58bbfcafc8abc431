"""gRPC transport: converts between protobuf messages and the data plane's types, nothing more."""
