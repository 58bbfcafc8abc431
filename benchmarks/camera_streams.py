"""The cameras benchmark's clients (benchmarks/cameras.py): each camera one ModelStreamInfer
stream sending its frames open loop at its own rate, inline or through shared memory, and one
stream as fast as its window lets it for the guard's capacity."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import grpc

from guard.protocol.proto import inference_pb2 as pb

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclass
class CameraRun:
    offered: int = 0
    started: float = 0.0
    last_answer: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)


def frame_requests(model: str, jpegs: list[bytes]) -> list[bytes]:
    """Serialised requests, one per frame, without id or camera: those are appended per send
    (protobuf merges concatenated messages; a map entry or field given later wins)."""
    out = []
    for data in jpegs:
        message = pb.ModelInferRequest(model_name=model)
        message.inputs.add(name="image", datatype="BYTES", shape=[1])
        message.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
        out.append(message.SerializeToString())
    return out


class InlineFrames:
    """Each frame's JPEG inside its request."""

    def __init__(self, requests: list[bytes], offset: int):
        self.requests, self.offset = requests, offset

    async def request(self, k: int) -> bytes:
        return self.requests[(self.offset + k) % len(self.requests)]

    def answered(self, k: int) -> None:
        pass

    def close(self) -> None:
        pass


class SharedMemoryFrames:
    """Each frame's JPEG written into a slot of the camera's own shared-memory region (a ring of
    SLOTS slots); the request names the slot. A slot is reused only once its frame is answered, so
    the gateway never reads a frame the camera has overwritten (it copies at decode)."""

    SLOTS = 128

    def __init__(self, model: str, jpegs: list[bytes], offset: int, name: str):
        self.model, self.jpegs, self.offset, self.name = model, jpegs, offset, name
        self.slot_bytes = 4 + max(map(len, jpegs))
        self.memory = shared_memory.SharedMemory(create=True, size=self.SLOTS * self.slot_bytes)
        self.free = asyncio.Semaphore(self.SLOTS)

    async def register(self, channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
            request_serializer=pb.SystemSharedMemoryRegisterRequest.SerializeToString,
            response_deserializer=pb.SystemSharedMemoryRegisterResponse.FromString,
        )
        await call(
            pb.SystemSharedMemoryRegisterRequest(name=self.name, key=f"/{self.memory.name}", byte_size=self.memory.size)
        )

    async def request(self, k: int) -> bytes:
        await self.free.acquire()  # a camera that is this far behind waits: its frames are late
        data = self.jpegs[(self.offset + k) % len(self.jpegs)]
        start = (k % self.SLOTS) * self.slot_bytes
        self.memory.buf[start : start + 4 + len(data)] = len(data).to_bytes(4, "little") + data
        message = pb.ModelInferRequest(model_name=self.model)
        tensor = message.inputs.add(name="image", datatype="BYTES", shape=[1])
        tensor.parameters["shared_memory_region"].string_param = self.name
        tensor.parameters["shared_memory_offset"].int64_param = start
        tensor.parameters["shared_memory_byte_size"].int64_param = 4 + len(data)
        return message.SerializeToString()

    def answered(self, k: int) -> None:
        self.free.release()

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()


def _tail(request_id: str, camera: str | None) -> bytes:
    message = pb.ModelInferRequest(id=request_id)
    if camera is not None:
        message.parameters["camera_id"].string_param = camera
    return message.SerializeToString()


async def play(
    channel: grpc.aio.Channel,
    frames: InlineFrames | SharedMemoryFrames,
    camera: str,
    fps: float,
    start: float,
    duration: float,
    name_camera: bool,
) -> CameraRun:
    """One camera, one stream: frame k at start + k / fps until `duration` has passed."""
    run = CameraRun()
    scheduled: dict[str, float] = {}
    call = channel.stream_stream(
        STREAM, request_serializer=lambda b: b, response_deserializer=pb.ModelStreamInferResponse.FromString
    )(timeout=duration + 120)

    async def read() -> None:
        async for answer in call:
            response = answer.infer_response
            at = scheduled.pop(response.id, None)
            run.last_answer = time.perf_counter()
            frames.answered(int(response.id.rsplit(":", 1)[1]) if ":" in response.id else -1)
            if answer.error_message:
                run.errors[response.parameters["guard_status"].string_param or "UNKNOWN"] += 1
            elif at is not None:
                run.latencies.append(time.perf_counter() - at)

    reader = asyncio.create_task(read())
    run.started = start
    k = 0
    while (at := start + k / fps) < start + duration:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        request_id = f"{camera}:{k}"
        scheduled[request_id] = at
        await call.write(await frames.request(k) + _tail(request_id, camera if name_camera else None))
        k += 1
    run.offered = k
    await call.done_writing()
    try:
        await reader
    except grpc.aio.AioRpcError as exc:
        run.errors[exc.code().name] += len(scheduled)
    return run


async def cameras_at(
    target: str,
    model: str,
    jpegs: list[bytes],
    rates: dict[str, float],
    duration: float,
    name_cameras: bool = True,
    transport: str = "jpeg",
) -> dict[str, CameraRun]:
    """Each camera of `rates` (name -> frames/s) on its own stream, all starting together."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        if transport == "shm":
            sources = [SharedMemoryFrames(model, jpegs, i * 7, f"{model}-{camera}") for i, camera in enumerate(rates)]
            for source in sources:
                await source.register(channel)
        else:
            requests = frame_requests(model, jpegs)
            sources = [InlineFrames(requests, i * 7) for i in range(len(rates))]
        try:
            start = time.perf_counter() + 0.5
            runs = await asyncio.gather(
                *(
                    play(channel, source, camera, fps, start, duration, name_cameras)
                    for source, (camera, fps) in zip(sources, rates.items())
                )
            )
        finally:
            if transport == "shm":
                await channel.unary_unary(
                    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
                    request_serializer=pb.SystemSharedMemoryUnregisterRequest.SerializeToString,
                    response_deserializer=pb.SystemSharedMemoryUnregisterResponse.FromString,
                )(pb.SystemSharedMemoryUnregisterRequest())
            for source in sources:
                source.close()
    return dict(zip(rates, runs))


async def capacity(target: str, frames: list[bytes], duration: float) -> float:
    """Frames/s one stream gets answered when it keeps 64 frames in flight (its window)."""
    answered = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=pb.ModelStreamInferResponse.FromString
        )(timeout=duration + 120)
        stop = time.perf_counter() + duration
        in_flight = asyncio.Semaphore(64)

        async def write() -> None:
            k = 0
            while time.perf_counter() < stop:
                await in_flight.acquire()
                await call.write(frames[k % len(frames)] + _tail(f"c:{k}", "capacity"))
                k += 1
            await call.done_writing()

        writer = asyncio.create_task(write())
        started = time.perf_counter()
        async for answer in call:
            in_flight.release()
            answered += not answer.error_message
        await writer
        return answered / (time.perf_counter() - started)
