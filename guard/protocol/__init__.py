"""Layer 1, protocol: what every other layer speaks. Request, response and verdict types, v2
datatypes and tensors, the protobuf codec, the error family with its status codes, limits, and
the typed reading of TOML config tables. Nothing here knows a model, a backend or a server."""
