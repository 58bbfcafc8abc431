"""inference.GRPCInferenceService: parses messages, admits requests and delegates every decision
to the data plane.

Requests arrive as bytes (service.py registers the handlers that way): the registration parses
them for the methods below, except those marked `takes_bytes`, which parse their own, so that a
message that is not a protobuf is an INVALID_ARGUMENT like any other bad input. Inference
requests (unary calls and stream requests) pass the server's concurrency limit first
(admission.py), before their message is parsed; the metadata RPCs never wait on anything and are
not limited, so readiness checks keep answering under any load.

Every call is identified (callers.py): inference requests carry the identity to the data plane;
with authentication on, a call without credentials is refused UNAUTHENTICATED before anything
else, except ServerLive, ServerReady and ModelReady, which stay open for probes (service.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from guard.protocol.codec import check_name, read_head
from guard.protocol.errors import GuardError, Overloaded, Unauthenticated
from guard.protocol.limits import MAX_CONCURRENCY, MAX_NAME_CHARS, STREAM_HELD_BYTES, STREAM_IN_FLIGHT, echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from guard.protocol.wire import check_parameters
from guard.serving.auth import Authenticator
from guard.serving.dataplane import DataPlane
from guard.serving.shared_memory import SharedMemoryRegistry
from guard.serving.transport.admission import Admission
from guard.serving.transport.callers import Callers
from guard.serving.transport.faults import FaultLog
from guard.serving.transport.requests import EncodedRequest
from guard.serving.transport.service import authenticates, open_to_all, parse, takes_bytes
from guard.serving.transport.status import reports_errors
from guard.serving.transport.streams import StreamSession, deadline_of
from guard.serving.transport.triton_views import model_config, model_statistics

log = logging.getLogger("guard.serving.transport")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        max_concurrency: int = MAX_CONCURRENCY,
        stream_in_flight: int = STREAM_IN_FLIGHT,
        stream_held_bytes: int = STREAM_HELD_BYTES,
        shared_memory: SharedMemoryRegistry | None = None,
        callers: Callers | None = None,
    ):
        self.dataplane = dataplane
        self.callers = callers or Callers(Authenticator())
        """Who each call comes from (guard.serving.auth); by default the peer, nothing required."""
        self.shared_memory = shared_memory
        """The system shared-memory regions clients registered (guard.serving.shared_memory); None
        when the extension is off (guard serve --shared-memory turns it on)."""
        self._no_regions = SharedMemoryRegistry(max_regions=0)
        self.admission = Admission(max_concurrency)
        self.faults = FaultLog(log)
        self.stream_in_flight = stream_in_flight
        self.stream_held_bytes = stream_held_bytes

    def overload_message(self) -> str:
        return (
            f"the gateway holds {self.admission.in_flight} requests, its limit (--max-concurrency "
            f"{self.admission.limit})"
        )

    @open_to_all
    @reports_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @open_to_all
    @reports_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @open_to_all
    @reports_errors
    async def ModelReady(self, request, context):
        if len(request.name) > MAX_NAME_CHARS or len(request.version) > MAX_NAME_CHARS:
            return pb.ModelReadyResponse(ready=False)  # no model has such a name
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @reports_errors
    async def ServerMetadata(self, request, context):
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @reports_errors
    async def ModelMetadata(self, request, context):
        check_name("name", request.name)
        check_name("version", request.version)
        config = self.dataplane.model(request.name, request.version).config

        def tensors(specs):
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=[-1, *s.shape])
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=config.name,
            versions=[config.version],
            platform=config.platform,
            inputs=tensors(config.inputs),
            outputs=tensors(config.outputs),
        )

    @reports_errors
    async def ModelConfig(self, request, context):
        check_name("name", request.name)
        check_name("version", request.version)
        runtime = self.dataplane.model(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(runtime.config, str(runtime.device)))

    @reports_errors
    async def ModelStatistics(self, request, context):
        """One model's statistics, or every served model's when the name is empty (as Triton)."""
        check_name("name", request.name)
        check_name("version", request.version)
        if request.name:
            runtimes = [self.dataplane.model(request.name, request.version)]
        else:
            runtimes = [self.dataplane.models[name] for name in sorted(self.dataplane.models)]
        return pb.ModelStatisticsResponse(
            model_stats=[
                model_statistics(r.config.name, r.config.version, r.metrics.statistics.snapshot()) for r in runtimes
            ]
        )

    @authenticates
    @takes_bytes
    @reports_errors
    async def ModelInfer(self, data, context):
        # First of all: a caller without credentials takes no place and learns nothing, not even the load.
        identity = self.callers.identify(context)
        if not self.admission.try_enter():  # before the message is parsed: a refusal must cost nothing
            await self.dataplane.over_limit()  # stopping: parked, then UNAVAILABLE
            raise Overloaded(self.overload_message())
        try:
            check_parameters(data, "ModelInfer")  # on the wire: a million parameters must not be parsed first
            message = parse(pb.ModelInferRequest, data, "ModelInfer")
            request = read_head(message, deadline_of(context))
            request.identity = identity
            encoded = EncodedRequest(message, len(data), self.shared_memory)
            return encoded.encode(await self.dataplane.infer(request, {}, encoded))
        finally:
            self.admission.leave()

    # -- the model repository extension (guard.serving.reload) ----------------------------------

    @reports_errors
    async def RepositoryIndex(self, request, context):
        request = self._repository_message(pb.RepositoryIndexRequest, request)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(name=name, version=version, state=state, reason=reason)
                for name, version, state, reason in self.dataplane.repository_index(request.ready)
            ]
        )

    @reports_errors
    async def RepositoryModelLoad(self, request, context):
        request = self._repository_message(pb.RepositoryModelLoadRequest, request)
        await self.dataplane.load_model(request.model_name, self._repository_parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @reports_errors
    async def RepositoryModelUnload(self, request, context):
        request = self._repository_message(pb.RepositoryModelUnloadRequest, request)
        await self.dataplane.unload_model(request.model_name, self._repository_parameters(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    def _repository_message(message_type, request):
        """The request as a message: handlers registered with a raw-bytes deserializer get bytes."""
        # Imported here to keep this extension's change to the servicer to its own methods.
        from google.protobuf.message import DecodeError

        from guard.protocol.errors import InvalidInput

        if isinstance(request, message_type):
            return request
        try:
            return message_type.FromString(request)
        except DecodeError:
            raise InvalidInput(
                f"{len(request)} bytes that are not a valid {message_type.DESCRIPTOR.full_name} message"
            ) from None

    @staticmethod
    def _repository_parameters(parameters) -> dict[str, object]:
        return {
            key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
            for key, value in parameters.items()
        }

    # -- the shared-memory extensions (guard.serving.shared_memory, docs/shared-memory.md) ---------

    @reports_errors
    async def SystemSharedMemoryRegister(self, request, context):
        if self.shared_memory is None:
            raise SharedMemoryOff(
                "system shared memory is off on this server (guard serve --shared-memory turns it on)"
            )
        self.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @reports_errors
    async def SystemSharedMemoryStatus(self, request, context):
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(
            regions={
                r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
                for r in self._regions().status(request.name)
            }
        )

    @reports_errors
    async def SystemSharedMemoryUnregister(self, request, context):
        self._regions().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def _regions(self) -> SharedMemoryRegistry:
        # Off, status and unregister answer as for an empty table, as Triton's do.
        return self.shared_memory if self.shared_memory is not None else self._no_regions

    # CUDA IPC handles need a CUDA context in the gateway process and a backend that reads device
    # memory; the guard's batches start on the host. No region is ever registered, so status and
    # unregister answer as Triton does for an empty table.

    @reports_errors
    async def CudaSharedMemoryRegister(self, request, context):
        raise CudaUnsupported(
            "CUDA shared memory is not supported by this server: register system shared "
            "memory (SystemSharedMemoryRegister) instead"
        )

    @reports_errors
    async def CudaSharedMemoryStatus(self, request, context):
        if request.name:
            raise CudaRegionNotFound(
                f"no CUDA shared memory region named {echo(request.name)} is registered: this server supports none"
            )
        return pb.CudaSharedMemoryStatusResponse()

    @reports_errors
    async def CudaSharedMemoryUnregister(self, request, context):
        return pb.CudaSharedMemoryUnregisterResponse()

    @authenticates
    @takes_bytes
    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """See streams.py: concurrent requests, answers with their ids, error answers for bad
        frames, backpressure at `stream_in_flight` unanswered requests. The caller is identified
        once, from the stream's metadata; every request on it carries that identity."""
        try:
            identity = self.callers.identify(context)
        except Unauthenticated as exc:
            self.faults.failed("ModelStreamInfer", exc.status, exc.message)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        session = StreamSession(
            self, request_iterator, context, self.stream_in_flight, self.stream_held_bytes, identity=identity
        )
        async with contextlib.aclosing(session.answers()) as answers:  # its cleanup runs when the stream ends
            async for answer in answers:
                yield answer


class CudaUnsupported(GuardError):
    """FAILED_PRECONDITION: the request may be well formed, but this server lacks what it needs, and
    retrying will not help. Not UNAVAILABLE (clients and gRPC retry policies treat that as
    transient and would retry), not UNIMPLEMENTED (what gRPC answers for an unknown method: the
    extension's other RPCs do work), not INVALID_ARGUMENT (Triton's answer without GPUs; the
    arguments may well be valid)."""

    status = "FAILED_PRECONDITION"


class SharedMemoryOff(CudaUnsupported):
    """FAILED_PRECONDITION, for the reasons CudaUnsupported gives."""


class CudaRegionNotFound(GuardError):
    status = "NOT_FOUND"
