"""Fixtures for the remote backend: MLServer (in its own venv, built on first use) serving the demo
model, and repositories whose `digits` runs through an upstream."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc
from tests.conftest import DEMO_REPOSITORY

FEATURE_DETECTORS = ("mahalanobis", "detector_network")


@pytest.fixture(scope="session")
def mlserver_digits():
    """MLServer serving the demo's model file (INT8, features exposed) as `digits`."""
    from benchmarks.peers.mlserver import MLServerProcess

    with MLServerProcess(DEMO_REPOSITORY / "digits" / "model.onnx", "digits") as peer:
        yield peer


def drop_detectors(text: str, types=FEATURE_DETECTORS) -> str:
    """The config without the [[detectors]] tables of the given types, and without its [ensemble]
    table (whose clean scores name every detector): what is left combines as a union."""
    text = re.sub(r"(?ms)^\[ensemble\]\n.*?(?=^\[|\Z)", "", text)
    blocks = re.split(r"(?m)^(?=\[\[detectors\]\])", text)
    return "".join(b for b in blocks if not any(f'type = "{t}"' in b for t in types))


def remote_repository(
    tmp_path: Path,
    target: str,
    mode: str = "through",
    model: str = "digits",
    source: str = "digits",
    extra: str = "",
    edit=None,
) -> Path:
    """A repository holding `source` as `digits`, backed by the upstream at `target`.
    In mode `through` the local model file is removed: the upstream alone runs the model."""
    repository = tmp_path / "front"
    directory = repository / "digits"
    shutil.copytree(DEMO_REPOSITORY / source, directory)
    path = directory / "config.toml"
    text = path.read_text().replace(f'name = "{source}"', 'name = "digits"', 1)
    backend = f'[backend]\nkind = "remote"\ntarget = "{target}"\nmodel = "{model}"\nmode = "{mode}"\n{extra}'
    text = text.replace("[backend]\n", backend, 1)
    if mode == "through":  # ONNX Runtime's keys only mean something for forward_clean's local copy
        text = re.sub(r"(?m)^(intra_op_threads|inter_op_threads) = .*\n", "", text)
    path.write_text(edit(text) if edit else text)
    if mode == "through":
        (directory / "model.onnx").unlink()
    return repository


def passthrough_repository(tmp_path: Path, source: str = "digits", name: str | None = None) -> Path:
    """A guard repository serving `source` with no detectors: a plain v2 server for chaining."""
    repository = tmp_path / "upstream"
    directory = repository / (name or source)
    shutil.copytree(DEMO_REPOSITORY / source, directory)
    path = directory / "config.toml"
    text = drop_detectors(
        path.read_text(), types=("squeeze_bit_depth", "squeeze_median", "confidence_margin", *FEATURE_DETECTORS)
    )
    path.write_text(text.replace(f'name = "{source}"', f'name = "{name or source}"', 1))
    return repository


def infer(client: triton.InferenceServerClient, x: np.ndarray, model: str = "digits", **kwargs):
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return client.infer(model, [tensor], **kwargs)


def verdict_of(result) -> tuple[str, str, float]:
    params = result.get_response().parameters
    return (
        params["guard_verdict"].string_param,
        params["guard_flagged_by"].string_param,
        params["guard_score"].double_param,
    )


class FakeUpstream(pb_grpc.GRPCInferenceServiceServicer):
    """A digits-shaped v2 server whose logits are each row's first ten pixels (so row order is
    checkable). `batch`: -1 variable, k a fixed batch size, None no batch dimension. It answers
    after `delay` seconds and records the grpc-timeout and the input shape of every call."""

    def __init__(self, delay: float = 0.0, batch: int | None = -1):
        self.delay, self.batch = delay, batch
        self.remaining: list[float | None] = []
        self.shapes: list[tuple[int, ...]] = []

    def ModelMetadata(self, request, context):
        tensor = pb.ModelMetadataResponse.TensorMetadata
        lead = [] if self.batch is None else [self.batch]
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform="fake",
            inputs=[tensor(name="input", datatype="FP32", shape=[*lead, 1, 16, 16])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[*lead, 10])],
        )

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request, context):
        self.remaining.append(context.time_remaining())
        shape = tuple(request.inputs[0].shape)
        self.shapes.append(shape)
        time.sleep(self.delay)
        x = np.frombuffer(request.raw_input_contents[0], np.float32)
        logits = x.reshape(-1, 256)[:, :10] if self.batch is not None else x[:10]
        response = pb.ModelInferResponse(model_name=request.model_name, raw_output_contents=[logits.tobytes()])
        response.outputs.add(name="logits", datatype="FP32", shape=logits.shape)
        return response


@contextlib.contextmanager
def fake_upstream(delay: float = 0.0, batch: int | None = -1):
    """(the fake, its target) on a free port."""
    fake = FakeUpstream(delay, batch)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(0)
