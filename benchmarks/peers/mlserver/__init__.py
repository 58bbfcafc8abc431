"""MLServer as a peer and an upstream: installed in its own virtual environment, serving one ONNX
file through the minimal runtime beside this file (`onnx_runtime.OnnxModel`).

MLServer pins its own grpcio/protobuf/fastapi versions, so it never shares the guard's
environment; the venv is built once (about a minute) and reused while its requirements hold.

    with MLServerProcess(onnx_path, "digits", max_batch_size=16) as peer:
        peer.grpc_target   # "127.0.0.1:PORT", speaks KServe v2 gRPC
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from guard.backends.onnx_graph import onnx_signature
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.proto import inference_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[3]
RUNTIME = Path(__file__).with_name("onnx_runtime.py")
REQUIREMENTS = ("mlserver>=1.6", "onnxruntime>=1.17")
DEFAULT_VENV = ROOT / ".venvs" / "mlserver"


def venv_path() -> Path:
    return Path(os.environ.get("GUARD_MLSERVER_VENV", DEFAULT_VENV))


def ensure_venv(path: Path | None = None, quiet: bool = True) -> Path:
    """The `mlserver` executable of a venv holding REQUIREMENTS, created on first use."""
    path = path or venv_path()
    stamp = path / ".requirements"
    wanted = "\n".join(REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == wanted and (path / "bin" / "mlserver").exists():
        return path / "bin" / "mlserver"
    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", *(["--quiet"] if quiet else []), *REQUIREMENTS],
        check=True,
    )
    stamp.write_text(wanted)
    return path / "bin" / "mlserver"


def free_port() -> int:
    # MLServer cannot report a port it picked itself, so take one the kernel just handed out.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensor_metadata(specs) -> list[dict]:
    return [{"name": s.name, "datatype": s.datatype, "shape": [-1, *s.shape]} for s in specs]


def write_model_folder(
    folder: Path, onnx_path: Path, name: str, max_batch_size: int = 0, max_batch_time: float = 0.002, version: str = "1"
) -> Path:
    """An MLServer model folder: the ONNX file, the runtime and model-settings.json."""
    model_dir = folder / name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / "model.onnx")
    shutil.copyfile(RUNTIME, model_dir / RUNTIME.name)
    inputs, outputs = onnx_signature(onnx_path)
    settings = {
        "name": name,
        "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": str(model_dir / "model.onnx"), "version": version},
        "inputs": _tensor_metadata(inputs),
        "outputs": _tensor_metadata(outputs),
    }
    if max_batch_size > 1:  # MLServer's adaptive batching
        settings.update(max_batch_size=max_batch_size, max_batch_time=max_batch_time)
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return model_dir


class MLServerProcess:
    """`mlserver start` on a folder holding one ONNX model; a context manager that waits until ready."""

    def __init__(
        self,
        onnx_path: Path,
        name: str = "digits",
        max_batch_size: int = 0,
        max_batch_time: float = 0.002,
        grpc_port: int | None = None,
        workers: int = 0,
        startup_timeout: float = 120.0,
        log_path: Path | None = None,
    ):
        self.executable = ensure_venv()
        self.name = name
        self.grpc_port = grpc_port or free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.startup_timeout = startup_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="mlserver-"))
        write_model_folder(self._tmp, onnx_path, name, max_batch_size, max_batch_time)
        (self._tmp / "settings.json").write_text(
            json.dumps(
                {
                    "debug": False,
                    "host": "127.0.0.1",
                    "grpc_port": self.grpc_port,
                    "http_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": workers,
                    "metrics_endpoint": None,
                }
            )
        )
        self.log_path = log_path or self._tmp / "mlserver.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MLServerProcess:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # the guard's path must not leak into MLServer's interpreter
        self.process = subprocess.Popen(
            [str(self.executable), "start", str(self._tmp)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mlserver exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if stub.ModelReady(pb.ModelReadyRequest(name=self.name), timeout=1.0).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"mlserver not ready after {self.startup_timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)  # MLServer may fork workers; stop the whole group
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> MLServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
