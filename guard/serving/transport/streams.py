"""One ModelStreamInfer stream: requests run concurrently (so they batch together), each answer
carries its request's id, and a failed request becomes an error answer while the stream goes on.

Three things keep one stream from hurting anyone else:

- A bad frame is one failed request. Frames arrive as bytes (service.py) and are parsed here, so a
  frame that is not a ModelInferRequest gets an error answer (without an id: it has none) and the
  next frame is read as usual. An exception from the reader itself (gRPC failing the read) ends
  the stream with a status once the answers already due are sent, instead of leaving the client
  waiting for answers that never come.
- Backpressure. The reader takes a frame only while the stream holds fewer than `in_flight`
  requests not yet answered and under `held_bytes` of them (an answer counts as given once gRPC
  has sent it, i.e. when the generator resumes after `yield`). A client that floods or stops
  reading therefore stalls on gRPC flow control at its own end; the gateway's memory for the stream
  stays bounded whatever it does.
- A share of the queue. `in_flight` (64 by default, limits.STREAM_IN_FLIGHT) is also the most
  this stream can have in a model's queue: 1/16 of a default queue, so one stream cannot fill
  the queue every client shares. Stream requests also count against the server's concurrency
  limit like unary calls; over it, the request gets a RESOURCE_EXHAUSTED error answer (with its id:
  a stream request is parsed before that check, since answers come in any order).

Answers come back as requests finish, in any order, except that requests naming the same camera
(the `camera_id` parameter, guard.serving.cameras) are answered in the order they were sent: a
camera's frames are a sequence, and a client tracking objects across them must not see frame 7's
answer before frame 6's. A frame that finishes early waits for its camera's earlier ones only.

Error answers carry `error_message` (with a retry hint for load), the request's model, version and
id when the frame parsed, and the status name as the response parameter `guard_status`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from guard.protocol.codec import read_head, shared_memory_of
from guard.protocol.errors import GuardError, Overloaded
from guard.protocol.limits import MAX_NAME_CHARS, echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.wire import check_parameters
from guard.serving.cameras import CAMERA_ID
from guard.serving.transport.requests import EncodedRequest
from guard.serving.transport.service import parse
from guard.serving.transport.status import RETRY_PUSHBACK, retry_hint, status_code, with_hint

log = logging.getLogger("guard.serving.transport")

RPC = "ModelStreamInfer"
STATUS_PARAMETER = "guard_status"
_END = object()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class Window:
    """Requests read from a stream and not yet answered: at most `count`, and under `nbytes` of
    them unless it is the only one."""

    def __init__(self, count: int, nbytes: int):
        self.max_count, self.max_bytes = count, nbytes
        self.count = self.bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    def has_room(self) -> bool:
        return self.count == 0 or (self.count < self.max_count and self.bytes < self.max_bytes)

    async def wait_for_room(self) -> None:
        while not self.has_room():
            self._room.clear()
            await self._room.wait()

    def take(self, cost: int) -> None:
        self.count += 1
        self.bytes += cost

    def charge(self, cost: int) -> None:
        """More bytes for a request already taken (known once it is parsed)."""
        self.bytes += cost

    def give_back(self, cost: int) -> None:
        self.count -= 1
        self.bytes -= cost
        self._room.set()


class StreamSession:
    def __init__(
        self,
        servicer,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        in_flight: int,
        held_bytes: int,
        identity: str = "",
    ):
        self.servicer = servicer
        self.identity = identity
        """The caller, identified once from the stream's metadata (guard.serving.auth)."""
        self.requests = requests
        self.context = context
        self.window = Window(in_flight, held_bytes)
        self._answers: asyncio.Queue = asyncio.Queue()  # bounded by the window: each item holds a place
        self._pending: set[asyncio.Task] = set()
        self._failure: BaseException | None = None
        # Per camera, its requests in the order they were read: [answer or None, cost] each.
        self._lanes: dict[str, collections.deque[list]] = {}

    async def answers(self) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        reader = asyncio.create_task(self._read(), name="stream-reader")
        try:
            while (item := await self._answers.get()) is not _END:
                answer, cost = item
                yield answer  # resumes once gRPC has sent it (or the client's flow control let it go)
                self.window.give_back(cost)
            await reader
            if self._failure is not None:
                await self._end_with(self._failure)
        finally:
            reader.cancel()
            for task in list(self._pending):
                task.cancel()

    async def _read(self) -> None:
        try:
            while True:
                await self.window.wait_for_room()
                try:
                    data = await anext(self.requests)
                except StopAsyncIteration:
                    break
                self.window.take(len(data))
                task = asyncio.create_task(self._one(data))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                # Let it run up to its first wait: it parses the frame and charges the bytes its inputs
                # in shared memory will take, before the window is checked for the next frame.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - ends the stream with a status once the due answers are out
            self._failure = exc
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._answers.put_nowait(_END)

    async def _one(self, data: bytes) -> None:
        servicer = self.servicer
        message = slot = None
        answer = None
        held = len(data)
        try:
            # Parsed before the concurrency check, unlike a unary call's: answers on a stream come in
            # any order, and a refusal is no use to the client without the id of what it refuses.
            check_parameters(data, RPC)  # before parsing: a million parameters must not be built first
            message = parse(pb.ModelInferRequest, data, RPC)
            # Before the first await: tasks start in the order their frames were read, so slots
            # are taken in that order too.
            slot = self._take_slot(message)
            # Inputs in shared memory are copied into the gateway when decoded: they count against
            # the stream's held bytes like inline ones (checked before the next frame is read).
            shared = sum(ref.byte_size for tensor in message.inputs if (ref := shared_memory_of(tensor)))
            self.window.charge(shared)
            held += shared
            if not servicer.admission.try_enter():
                await servicer.dataplane.over_limit()  # stopping: parked, then UNAVAILABLE
                raise Overloaded(servicer.overload_message())
            try:
                request = read_head(message, deadline_of(self.context))
                request.identity = self.identity
                encoded = EncodedRequest(message, len(data), servicer.shared_memory)
                response = await servicer.dataplane.infer(request, {}, encoded)
                answer = pb.ModelStreamInferResponse(infer_response=encoded.encode(response))
            finally:
                servicer.admission.leave()
        except GuardError as exc:
            answer = self._error_answer(exc, message)
        except Exception as exc:  # noqa: BLE001 - reported to the client, the stream stays open
            servicer.faults.server_fault(RPC, exc)
            answer = self._error_answer(GuardError(f"internal error: {echo(str(exc))}"), message)
        finally:
            if slot is None:
                if answer is not None:
                    self._answers.put_nowait((answer, held))
            else:  # cancelled (the stream is ending) leaves answer None: later frames are not held for it
                self._fill(slot, answer, held)

    def _take_slot(self, message: pb.ModelInferRequest) -> tuple[str, list] | None:
        parameter = message.parameters.get(CAMERA_ID)
        if parameter is None or parameter.WhichOneof("parameter_choice") != "string_param":
            return None  # no camera (or a malformed id, which the data plane refuses): any order
        camera = parameter.string_param
        entry = [None, 0, False]
        self._lanes.setdefault(camera, collections.deque()).append(entry)
        return camera, entry

    def _fill(self, slot: tuple[str, list], answer, cost: int) -> None:
        camera, entry = slot
        entry[:] = answer, cost, True
        lane = self._lanes[camera]
        while lane and lane[0][2]:
            answer, cost, _ = lane.popleft()
            if answer is not None:
                self._answers.put_nowait((answer, cost))
            else:
                self.window.give_back(cost)  # never answered (cancelled): its place is free again
        if not lane:
            del self._lanes[camera]

    def _error_answer(self, error: GuardError, message: pb.ModelInferRequest | None) -> pb.ModelStreamInferResponse:
        text = with_hint(error.message, retry_hint(error, self.servicer.admission))
        self.servicer.faults.failed(RPC, error.status, text)
        response = pb.ModelInferResponse()
        if message is not None:
            response.id = message.id
            if len(message.model_name) <= MAX_NAME_CHARS:  # a name the codec refused is not echoed back
                response.model_name = message.model_name
            if len(message.model_version) <= MAX_NAME_CHARS:
                response.model_version = message.model_version
        response.parameters[STATUS_PARAMETER].string_param = error.status
        return pb.ModelStreamInferResponse(error_message=text, infer_response=response)

    async def _end_with(self, failure: BaseException) -> None:
        """The reader failed: end the stream with that failure's status (INTERNAL if it is not ours)."""
        if isinstance(failure, GuardError):
            code, text = status_code(failure), failure.message
            retry_ms = retry_hint(failure, self.servicer.admission)
            metadata = () if retry_ms is None else ((RETRY_PUSHBACK, str(retry_ms)),)
        else:
            self.servicer.faults.server_fault(RPC, failure)
            code, text, metadata = grpc.StatusCode.INTERNAL, f"reading the stream failed: {echo(str(failure))}", ()
        await self.context.abort(code, text, metadata)
