"""The text attacks' oracle on a live gateway: each query one KServe v2 request, and what the guard
said about it kept beside the answer (guard.tools.evaluation.text_attacks defines the Oracle the
attacks call; this is the one that goes through the network)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCKED = "PERMISSION_DENIED"
REFUSALS = (BLOCKED, "INVALID_ARGUMENT")
"""The statuses a query may be answered with and the attack go on: the guard's, and the model's
refusal of one text. Any other status (the gateway down, overloaded) ends the attack."""


@dataclass(frozen=True)
class GatewayAnswer:
    """What the gateway said about one query besides its logits."""

    text: str
    parameters: dict[str, Any]
    """The response's guard_* parameters (guard_verdict, guard_score, guard_flagged_by); empty under
    policy shadow."""
    refusal: str | None = None
    """The status of a refused query, None when answered: PERMISSION_DENIED where policy enforce
    blocked it, INVALID_ARGUMENT where the text broke the model's contract (more tokens than it
    takes, say). Either way the attacker saw no logits."""

    @property
    def blocked(self) -> bool:
        return self.refusal == BLOCKED

    @property
    def verdict(self) -> str | None:
        return "blocked" if self.blocked else self.parameters.get("guard_verdict")


class GatewayOracle:
    """An Oracle on a live KServe v2 gRPC server (tritonclient.grpc, imported here: it is an
    optional dependency). Each text is its own request, a BYTES tensor of one UTF-8 row, because
    the gateway gives one verdict per request; up to `window` are in flight. The named output's
    logits come back softmaxed; a refused query (blocked by the guard, or a text the model does not
    take) comes back as a NaN row, which the attacks read as no answer.

    `answers` keeps every query's verdict parameters in the order asked: an attack's results
    take them in turn (each result's `queries` of them), which tells the evaluation which of an
    attack's queries the guard flagged."""

    def __init__(self, url: str, model: str, output: str = "logits", window: int = 16, timeout: float = 60.0):
        import tritonclient.grpc as triton

        self._triton = triton
        self.client = triton.InferenceServerClient(url)
        self.model, self.output, self.window, self.timeout = model, output, window, timeout
        meta = self.client.get_model_metadata(model)
        text = next((i for i in meta.inputs if i.datatype == "BYTES"), None)
        logits = next((o for o in meta.outputs if o.name == output), None)
        if text is None or logits is None:
            raise ValueError(f"model {model} takes no BYTES input or has no output {output!r}")
        self.input, self.shape = text.name, [1] * max(1, len(text.shape))  # [1, 1] for inputs of shape [-1, 1]
        self.classes = int(logits.shape[-1])
        self.answers: list[GatewayAnswer] = []

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> GatewayOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, texts: list[str]) -> np.ndarray:
        pending: list[Future[Any]] = [Future() for _ in texts]
        logits = np.full((len(texts), self.classes), np.nan)
        for row in range(min(self.window, len(texts))):
            self._send(texts[row], pending[row])
        for row, text in enumerate(texts):  # in turn: the answers keep the order the texts were asked in
            result = pending[row].result(timeout=self.timeout + 5)
            if row + self.window < len(texts):
                self._send(texts[row + self.window], pending[row + self.window])
            if isinstance(result, GatewayAnswer):  # refused
                self.answers.append(result)
                continue
            logits[row] = result.as_numpy(self.output).reshape(-1)
            params = result.get_response().parameters
            chosen = {
                k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items() if k.startswith("guard_")
            }
            self.answers.append(GatewayAnswer(text, chosen))
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        return shifted / shifted.sum(1, keepdims=True)

    def _send(self, text: str, answer: Future[Any]) -> None:
        """One request for the text; `answer` gets its result, or a GatewayAnswer where it was refused."""

        def done(result: Any, error: Any) -> None:
            if error is None:
                answer.set_result(result)
                return
            status = str(error.status()).removeprefix("StatusCode.")
            if status in REFUSALS:
                answer.set_result(GatewayAnswer(text, {}, status))
            else:
                answer.set_exception(RuntimeError(f"model {self.model}: {error}"))

        tensor = self._triton.InferInput(self.input, self.shape, "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=object).reshape(self.shape))
        self.client.async_infer(
            self.model,
            [tensor],
            done,
            outputs=[self._triton.InferRequestedOutput(self.output)],
            client_timeout=self.timeout,
        )
