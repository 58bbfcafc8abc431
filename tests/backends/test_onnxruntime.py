"""ONNX Runtime backend and execution-provider choice (CUDA paths run only where CUDA is present)."""

import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.backends.providers import TensorRTConfig, select_providers
from tests.conftest import DEMO_REPOSITORY, ROOT

MODEL = DEMO_REPOSITORY / "digits" / "model.onnx"  # INT8 (QDQ)
FP32_MODEL = DEMO_REPOSITORY / "digits_fp32" / "model.onnx"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# onnxruntime-gpu's CUDA provider, not merely a GPU (a CPU onnxruntime beside CUDA torch has none).
cuda_ort = pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
    reason="needs a CUDA device and onnxruntime-gpu",
)


def test_cpu_host_gets_cpu_only_and_no_error_output():
    if torch.cuda.is_available():
        pytest.skip("CPU-host behaviour")
    # A fresh interpreter, so that whatever ONNX Runtime prints is captured.
    code = (
        "from guard.backends.providers import TensorRTConfig, select_providers;"
        "print(select_providers(('tensorrt', 'cuda', 'cpu'), TensorRTConfig()))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('CPUExecutionProvider', {})]"
    assert "error" not in result.stderr.lower()


def test_backend_runs_batches_and_reports_errors():
    backend = OnnxRuntimeBackend.open(MODEL, intra_op_threads=1)
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    assert backend.infer({"input": x}, ["logits"])["logits"].shape == (5, 10)
    from guard.protocol.errors import BackendError

    with pytest.raises(BackendError, match="model execution failed"):
        backend.infer({"input": x.astype(np.float64)}, ["logits"])


@cuda_ort
def test_cuda_provider_is_chosen_and_matches_cpu():
    providers = select_providers(("cuda", "cpu"), TensorRTConfig())
    assert providers[0][0] == "CUDAExecutionProvider"
    x = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    for model in (FP32_MODEL, MODEL):  # INT8 QDQ too: TensorRT and CUDA run the same file
        gpu = OnnxRuntimeBackend.open(model, providers=("cuda", "cpu")).infer({"input": x}, ["logits"])
        cpu = OnnxRuntimeBackend.open(model, providers=("cpu",)).infer({"input": x}, ["logits"])
        assert (gpu["logits"].argmax(1) == cpu["logits"].argmax(1)).mean() >= 0.75
    gpu = OnnxRuntimeBackend.open(FP32_MODEL, providers=("cuda", "cpu")).infer({"input": x}, ["logits"])
    cpu = OnnxRuntimeBackend.open(FP32_MODEL, providers=("cpu",)).infer({"input": x}, ["logits"])
    np.testing.assert_allclose(gpu["logits"], cpu["logits"], rtol=1e-3, atol=1e-3)


@cuda
def test_tensorrt_provider_when_it_loads(tmp_path):
    providers = select_providers(("tensorrt", "cuda", "cpu"), TensorRTConfig(engine_cache_dir=str(tmp_path)))
    names = [name for name, _ in providers]
    if "TensorrtExecutionProvider" not in names:
        pytest.skip("TensorRT execution provider does not load on this host")
    assert providers[0][1]["trt_engine_cache_path"] == str(tmp_path)


@cuda
def test_pipeline_runs_squeezers_on_the_gpu(held_out):
    import tritonclient.grpc as triton

    from guard.serving.background import BackgroundServer
    from guard.serving.settings import ServerSettings

    with BackgroundServer(ServerSettings(repository=DEMO_REPOSITORY, grpc_port=0, metrics_port=0)) as srv:
        runtime = srv.server._runtimes["digits"]
        assert runtime.device.type == "cuda"
        with triton.InferenceServerClient(srv.grpc_url) as client:
            tensor = triton.InferInput("input", [4, 1, 16, 16], "FP32")
            tensor.set_data_from_numpy(held_out[0][:4])
            result = client.infer("digits", [tensor])
        assert "guard_verdict" in result.get_response().parameters
