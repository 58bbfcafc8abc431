"""The transport floor: a grpc.aio server whose ModelInfer returns a response of the same size as
the gateway's, without decoding, batching or running anything.

    python -m benchmarks.echo_server --port 0     # prints "echo ready: PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys

import grpc
import numpy as np

from guard.protocol.proto import inference_pb2 as pb


def canned_response(output_shape: tuple[int, ...]) -> bytes:
    response = pb.ModelInferResponse(
        model_name="digits", model_version="1", raw_output_contents=[np.zeros(output_shape, np.float32).tobytes()]
    )
    response.outputs.add(name="logits", datatype="FP32", shape=list(output_shape))
    for key, value in (("guard_verdict", "clean"), ("guard_flagged_by", "")):
        response.parameters[key].string_param = value
    response.parameters["guard_score"].double_param = 0.5
    return response.SerializeToString()


async def serve(port: int, output_shape: tuple[int, ...]) -> None:
    payload = canned_response(output_shape)

    async def infer(request: bytes, context) -> bytes:
        return payload

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer, request_deserializer=lambda b: b, response_serializer=lambda b: b
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo ready: {bound}", flush=True)
    await server.wait_for_termination()


@contextlib.contextmanager
def echo_server(output_shape: tuple[int, ...] = (1, 10)):
    """Run the echo server in its own process; yields its gRPC target."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.echo_server", "--output-shape", *map(str, output_shape)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        if not line.startswith("echo ready:"):
            raise RuntimeError(f"echo server failed to start: {line!r}")
        yield f"127.0.0.1:{line.split()[-1]}"
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--output-shape", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    asyncio.run(serve(args.port, tuple(args.output_shape)))


if __name__ == "__main__":
    main()
