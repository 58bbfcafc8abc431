"""Query-attack detection on a model whose clients send encoded images ([preprocess] kind images):
the fingerprint reads the decoded frame's thumbnail, through a live gateway and tritonclient."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import tritonclient.grpc as triton
from PIL import Image

from tests.conftest import running_gateway
from tests.serving.test_image_ingest import camera_repository

TOKENS = {
    "scout": "scout-0123456789abcdefghijklmn",
    "attacker": "attacker-abcdefghijklmnopqrstuv",
    "camera": "camera-ZYXWVUTSRQPONMLKJIHGFEDC",
}


@contextlib.contextmanager
def image_gateway(tmp_path):
    repository = camera_repository(
        tmp_path, detectors=[], clients={"query_attack": "flag", "min_near": 2, "min_changes": 3}
    )
    tokens = "\n".join(f"{name}:{token}" for name, token in TOKENS.items())
    with running_gateway(repository, auth_tokens_text=tokens) as server:
        yield triton.InferenceServerClient(server.grpc_url)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def ask(client: triton.InferenceServerClient, who: str, data: bytes) -> tuple[int, str]:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    result = client.infer("cam", [tensor], headers={"authorization": f"Bearer {TOKENS[who]}"})
    verdict = result.get_response().parameters["guard_client_verdict"].string_param
    return int(result.as_numpy("logits").reshape(-1).argmax()), verdict


def scenes(client) -> tuple[np.ndarray, np.ndarray]:
    """Two 64 x 64 scenes the model answers differently (smooth colour fields: JPEG keeps them)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:64, 0:64] / 64.0
    found: dict[int, np.ndarray] = {}
    while len(found) < 2:
        weights = rng.uniform(0, 1, (3, 3))
        field = np.stack([w[0] * rows + w[1] * cols + w[2] * rows * cols for w in weights], -1)
        image = np.clip(field / max(field.max(), 1e-6) * 255, 0, 255).astype(np.uint8)
        found.setdefault(ask(client, "scout", png(image))[0], image)
    a, b = found.values()
    return a, b


def test_a_probe_on_a_frame_is_flagged_and_a_static_camera_is_not(tmp_path):
    with image_gateway(tmp_path) as client:
        a, b = scenes(client)
        # A decision-based probe: frames near the blend where the answer changes, each a little noisy.
        low, high, label_a = 0.0, 1.0, ask(client, "scout", png(a))[0]
        for _ in range(10):
            mid = (low + high) / 2
            blend = ((1 - mid) * a + mid * b).round().astype(np.uint8)
            low, high = (mid, high) if ask(client, "scout", png(blend))[0] == label_a else (low, mid)
        point = (1 - (low + high) / 2) * a.astype(float) + (low + high) / 2 * b
        rng = np.random.default_rng(1)
        probe = [np.clip(point + rng.normal(0, 2, point.shape), 0, 255).round().astype(np.uint8) for _ in range(40)]
        answers = [ask(client, "attacker", png(f)) for f in probe]
        assert len({label for label, _ in answers}) > 1, "the probe must straddle the decision"
        verdicts = [v for _, v in answers]
        assert "query_attack" in verdicts[:30] and verdicts[-1] == "query_attack"
        # A camera on a still scene: the same frame with sensor noise, JPEG-encoded, all day.
        scene = a.astype(float)
        frames = [jpeg(np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)) for _ in range(60)]
        seen = [ask(client, "camera", f) for f in frames]
        assert len({label for label, _ in seen}) == 1 and {v for _, v in seen} == {"clean"}
