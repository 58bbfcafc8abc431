"""Registers the v2 inference service with raw-bytes request deserializers, and parses requests
itself.

With the generated registration (inference_pb2_grpc), gRPC parses each request before the servicer
runs, and a message that does not parse fails inside gRPC as UNKNOWN ("DecodeError"), with a
traceback in the log, on every RPC. Here every handler gets the request's bytes: a method marked
`takes_bytes` parses them itself (ModelInfer, after the concurrency check; ModelStreamInfer, frame
by frame, so a bad frame is one failed request), and any other method is wrapped so that its
request is parsed before it runs, a parse failure answering INVALID_ARGUMENT that names the RPC and
the message type. Methods keep the generated servicer's signatures, and the generated code stays as
protoc wrote it (proto/generate.py checks that it is not stale). Responses are serialized by gRPC
as before.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from guard.protocol.errors import InvalidInput
from guard.protocol.proto import inference_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

M = TypeVar("M", bound=Message)


def takes_bytes(method):
    """Mark a servicer method as taking the request's bytes (it parses them with `parse`)."""
    method.takes_bytes = True
    return method


def parse(message_type: type[M], data: bytes, rpc: str) -> M:
    """`data` as a `message_type`, or InvalidInput naming the RPC and the type."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise InvalidInput(
            f"{rpc}: {len(data)} bytes that are not a valid {message_type.DESCRIPTOR.full_name} message"
        ) from None


def _parsing(servicer, handler, message_type: type[Message], rpc: str):
    faults = getattr(servicer, "faults", None)

    @functools.wraps(handler)
    async def parsed(data: bytes, context: grpc.aio.ServicerContext):
        try:
            request = parse(message_type, data, rpc)
        except InvalidInput as exc:
            if faults is not None:
                faults.failed(rpc, exc.status, exc.message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        return await handler(request, context)

    return parsed


def add_inference_service(servicer, server: grpc.aio.Server) -> None:
    """Every method of the service, its handler taking the request's bytes (see the module doc) and
    gRPC serializing its response message."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        serialize = getattr(pb, method.output_type.name).SerializeToString
        handler = getattr(servicer, method.name)
        if not getattr(handler, "takes_bytes", False):
            handler = _parsing(servicer, handler, getattr(pb, method.input_type.name), method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                handler, request_deserializer=None, response_serializer=serialize
            )
        elif not (method.client_streaming or method.server_streaming):
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=None, response_serializer=serialize
            )
        else:  # the v2 protocol has none; a proto that grew one needs its handler here
            raise TypeError(f"{method.full_name}: only unary and bidirectional streaming methods are served")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
