"""The clients of the query-attack benchmarks (benchmarks.query_attacks, benchmarks.adaptive_queries,
benchmarks.benign_population): the gateway as one identity sees it, ART's black-box attacks asking
it, and benign clients replaying digits or camera footage as the digits model's input."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import numpy as np
import tritonclient.grpc as triton

L2_BUDGET = 2.0
"""HopSkipJump and Boundary succeed with a misclassified query at most this far (L2) from the digit."""


LINF_BUDGET = 0.3
"""Square's L-infinity ball (every query inside it)."""


class Stop(Exception):
    """Ends an attack run: its query budget is spent."""


@dataclass
class Run:
    client: str
    kind: str
    queries: int = 0
    first_flag: int | None = None
    """The first query the live gateway flagged (1-based); None: never."""
    first_success: int | None = None
    """Attacks: the first query that succeeded (1-based); None: none did within the budget."""
    notes: dict[str, float] = field(default_factory=dict)
    rows: list[np.ndarray] = field(default_factory=list, repr=False)
    answers: list[int] = field(default_factory=list, repr=False)
    logits: list[np.ndarray] = field(default_factory=list, repr=False)
    verdicts: list[str] = field(default_factory=list, repr=False)

    def book(self, row: np.ndarray, logits: np.ndarray, flagged: bool, verdict: str) -> None:
        self.queries += 1
        self.rows.append(row)
        self.answers.append(int(logits.argmax()))
        self.logits.append(logits)
        self.verdicts.append(verdict)
        if flagged and self.first_flag is None:
            self.first_flag = self.queries

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("rows", "answers", "logits", "verdicts")}


class GatewayModel:
    """The gateway as one client sees it: each row is one request with the client's token."""

    def __init__(self, client: triton.InferenceServerClient, token: str):
        self.client, self.headers = client, {"authorization": f"Bearer {token}"}

    def ask(self, row: np.ndarray) -> tuple[np.ndarray, bool, str]:
        tensor = triton.InferInput("input", [1, *row.shape], "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(row[None], dtype=np.float32))
        result = self.client.infer("digits", [tensor], headers=self.headers)
        parameters = result.get_response().parameters
        flagged = parameters["guard_client_verdict"].string_param == "query_attack"
        return result.as_numpy("logits")[0], flagged, parameters["guard_verdict"].string_param


def attack_predict(model: GatewayModel, run: Run, x0: np.ndarray, label: int, name: str, budget: int):
    """ART's predict_fn: asks the gateway row by row and books every query; served rows get
    softmax probabilities. Under `flag` the attack goes on after a flag (a client that ignores
    it), until it ends or spends the budget."""

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        for row in np.asarray(x, dtype=np.float32):
            if run.queries >= budget:
                raise Stop
            logits, flagged, verdict = model.ask(row)
            run.book(row, logits, flagged, verdict)
            delta = row - x0
            within = (
                np.abs(delta).max() <= LINF_BUDGET + 1e-6 if name == "square" else np.linalg.norm(delta) <= L2_BUDGET
            )
            if run.first_success is None and int(logits.argmax()) != label and within:
                run.first_success = run.queries
            e = np.exp(logits - logits.max())
            out.append(e / e.sum())
        return np.stack(out)

    return predict


def make_attack(name: str, classifier):
    from art.attacks.evasion import BoundaryAttack, HopSkipJump, SquareAttack

    if name == "hopskipjump":
        return HopSkipJump(classifier, targeted=False, norm=2, max_iter=50, max_eval=1000, init_eval=100, verbose=False)
    if name == "square":
        return SquareAttack(classifier, norm=np.inf, eps=LINF_BUDGET, max_iter=5000, nb_restarts=1, verbose=False)
    return BoundaryAttack(classifier, targeted=False, max_iter=5000, num_trial=25, sample_size=20, verbose=False)


def run_attack(url: str, token: str, name: str, x0: np.ndarray, label: int, budget: int) -> Run:
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    run = Run(token.split("-")[0], name)
    model = GatewayModel(triton.InferenceServerClient(url), token)
    predict = attack_predict(model, run, x0, label, name, budget)
    # The neural-network flavour of ART's black box: Square asks for it; it still only calls predict.
    classifier = BlackBoxClassifierNeuralNetwork(predict, (1, 16, 16), 10, clip_values=(0.0, 1.0))
    with contextlib.suppress(Stop):
        make_attack(name, classifier).generate(x0[None])
    return run


def replay_client(url: str, token: str, x: np.ndarray, seed: int) -> Run:
    model = GatewayModel(triton.InferenceServerClient(url), token)
    run = Run(token, "replay")
    order = np.concatenate([np.random.default_rng(seed + i).permutation(len(x)) for i in range(2)])
    for i in order:
        run.book(x[i], *model.ask(x[i]))
    return run


def as_digit_input(frame: np.ndarray) -> np.ndarray:
    """An RGB frame as the digits model's input: grey, 16x16, in [0, 1]."""
    from PIL import Image

    grey = Image.fromarray(frame).convert("L").resize((16, 16), Image.Resampling.BOX)
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def noisy_jpeg(frame: np.ndarray, rng: np.random.Generator, sigma: float = 3.0, quality: int = 85) -> np.ndarray:
    """The same scene as a sensor sees it again: Gaussian noise, then JPEG re-encoding."""
    import io

    from PIL import Image

    noisy = np.clip(frame.astype(np.float32) + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def camera_client(url: str, token: str, frames: list[np.ndarray], still: np.ndarray, repeats: int, seed: int) -> Run:
    """Moving footage, then a static stretch of `still` re-sent `repeats` times."""
    model = GatewayModel(triton.InferenceServerClient(url), token)
    rng = np.random.default_rng(seed)
    run = Run(token, "camera")
    stream = [as_digit_input(f) for f in frames]
    stream += [as_digit_input(noisy_jpeg(still, rng)) for _ in range(repeats)]
    for row in stream:
        run.book(row, *model.ask(row))
    static = run.answers[len(frames) :]
    run.notes["static_answer_changes"] = float(sum(a != b for a, b in zip(static, static[1:], strict=False)))
    return run


FOOTAGE = {"choose": ("carphone", "bigbuckbunny"), "test": ("bikes",)}
"""Which clips the cameras replay in each phase: the rule is chosen on one, reported on the other."""


def footage(phase: str, cameras_per_clip: int = 3) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """(the whole clip, one still frame of it) per camera."""
    from guard_examples.footage import video_frames

    cameras = []
    for name in FOOTAGE[phase]:
        frames = list(video_frames(name))
        for k in range(cameras_per_clip):
            cameras.append((frames, frames[(2 * k + 1) * len(frames) // (2 * cameras_per_clip)]))
    return cameras
