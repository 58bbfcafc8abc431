"""inference.GRPCInferenceService: converts messages and delegates every decision to the data plane."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from guard.protocol.codec import decode_request, encode_response
from guard.protocol.errors import GuardError
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from guard.serving.dataplane import DataPlane
from guard.serving.transport.status import reports_errors

log = logging.getLogger("guard.serving.transport")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @reports_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @reports_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @reports_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @reports_errors
    async def ServerMetadata(self, request, context):
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @reports_errors
    async def ModelMetadata(self, request, context):
        config = self.dataplane.model(request.name, request.version).config

        def tensors(specs):
            return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype,
                                                            shape=[-1, *s.shape]) for s in specs]

        return pb.ModelMetadataResponse(name=config.name, versions=[config.version], platform=config.platform,
                                        inputs=tensors(config.inputs), outputs=tensors(config.outputs))

    @reports_errors
    async def ModelInfer(self, request, context):
        domain, datatypes = decode_request(request, _deadline(context))
        return encode_response(await self.dataplane.infer(domain, datatypes))

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of a stream run concurrently (so they batch together); each answer carries
        its request's id, and a failed request becomes an error_message while the stream stays open."""
        answers: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(message: pb.ModelInferRequest) -> None:
            try:
                domain, datatypes = decode_request(message, _deadline(context))
                response = encode_response(await self.dataplane.infer(domain, datatypes))
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except GuardError as exc:
                await answers.put(pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(model_name=message.model_name, id=message.id)))
            except Exception as exc:  # noqa: BLE001 - reported to the client, stream stays open
                log.exception("stream request failed")
                await answers.put(pb.ModelStreamInferResponse(error_message=f"internal error: {exc}"))

        async def read() -> None:
            async for message in request_iterator:
                task = asyncio.create_task(one(message))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
            await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()
