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

When the server authenticates its callers (guard.serving.auth), every method is wrapped so that a
caller without credentials is refused UNAUTHENTICATED before its request is even parsed, except
methods marked `open_to_all` (readiness, for probes and load balancers) and those marked
`authenticates`, which identify the caller themselves because they need the identity (inference).
Authenticated is the default: a method added later is never open by mistake.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from guard.protocol.errors import InvalidInput, Unauthenticated
from guard.protocol.proto import inference_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

M = TypeVar("M", bound=Message)


def takes_bytes(method):
    """Mark a servicer method as taking the request's bytes (it parses them with `parse`)."""
    method.takes_bytes = True
    return method


def open_to_all(method):
    """Mark a servicer method that answers callers without credentials (readiness checks)."""
    method.open_to_all = True
    return method


def authenticates(method):
    """Mark a servicer method that identifies its caller itself (servicer.callers.identify)."""
    method.authenticates = True
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


def _authenticated(servicer, handler, rpc: str):
    @functools.wraps(handler)
    async def checked(request, context: grpc.aio.ServicerContext):
        try:
            servicer.callers.identify(context)
        except Unauthenticated as exc:
            servicer.faults.failed(rpc, exc.status, exc.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return await handler(request, context)

    return checked


def add_inference_service(servicer, server: grpc.aio.Server) -> None:
    """Every method of the service, its handler taking the request's bytes (see the module doc) and
    gRPC serializing its response message."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    callers = getattr(servicer, "callers", None)
    for method in SERVICE.methods:
        serialize = getattr(pb, method.output_type.name).SerializeToString
        handler = own = getattr(servicer, method.name)
        if not getattr(handler, "takes_bytes", False):
            handler = _parsing(servicer, handler, getattr(pb, method.input_type.name), method.name)
        checks_itself = getattr(own, "open_to_all", False) or getattr(own, "authenticates", False)
        if callers is not None and callers.required and not checks_itself:
            if method.client_streaming or method.server_streaming:
                raise TypeError(f"{method.full_name}: a streaming method must identify its caller itself")
            handler = _authenticated(servicer, handler, method.name)
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
