"""Maps the gateway's errors to gRPC status codes, in one place for every RPC."""

from __future__ import annotations

import logging

import grpc

from guard.errors import GuardError

log = logging.getLogger("guard.transport")


def status_code(error: GuardError) -> grpc.StatusCode:
    return grpc.StatusCode[error.status]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streams report per-request errors themselves
        behaviour = handler.unary_unary

        async def guarded(request, context):
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except GuardError as exc:
                await context.abort(status_code(exc), exc.message)
            except Exception as exc:  # noqa: BLE001 - never leak a raw traceback to clients
                log.exception("unexpected error in %s", handler_call_details.method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
