"""Property-based fuzzing of a live gateway, as a hostile client would: every answer to a client's
fault must be a precise status (never INTERNAL or UNKNOWN), every call must be answered within a
deadline far above the gateway's own limits (no hang), and a correct request sent right after must
still get the right answer.

Cases (hypothesis strategies in benchmarks/fuzz_cases.py, shared with tests/serving/test_fuzz.py):
- structured ModelInferRequests: random datatypes, shapes (ranks past the cap, dimensions up to
  2^63 - 1, negative ones), raw or typed contents of the right size or not, parameters, requested
  outputs (repeated up to 100,000 times), ids and names (up to 1 MB), mostly close to a valid
  request of the demo model so that the checks deep in the path are reached, sent on ModelInfer or
  as one frame of a ModelStreamInfer stream;
- the other RPCs' messages with random names;
- byte-level mutations (flips, truncation, insertion, duplication, splicing) of valid serialized
  requests, sent on any RPC of the service (the byte strings of one RPC are often another's).

    .venv/bin/python -m benchmarks.fuzz --cases 20000      # against a `guard serve` subprocess

prints the answers' counts by status code and every violation (none expected).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings

from benchmarks.fuzz_cases import SERVICE, STREAM, UNARY, cases, good_request
from guard.protocol.proto import inference_pb2 as pb

CLIENT_DEADLINE = 30.0
"""Seconds before a call counts as hung: six times the model's default queue timeout (5 s)."""
SERVER_FAULTS = {"INTERNAL", "UNKNOWN"}

CHECK_ID = "fuzz-check"
"""The id of the correct request sent after each case (no case uses it)."""


# -- the client ------------------------------------------------------------------------------------


@dataclass
class Fuzzer:
    """Sends cases to a gateway over a raw channel and checks the three properties."""

    target: str
    counts: collections.Counter = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def __post_init__(self):
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        self.calls = {name: self.channel.unary_unary(f"/{SERVICE.full_name}/{name}") for name in UNARY}
        self.stream = self.channel.stream_stream(f"/{SERVICE.full_name}/{STREAM}")
        self.good = good_request(CHECK_ID).SerializeToString()
        self.expected = self._good_logits()

    def close(self) -> None:
        self.channel.close()

    def _good_logits(self) -> np.ndarray:
        response = pb.ModelInferResponse.FromString(self.calls["ModelInfer"](self.good, timeout=CLIENT_DEADLINE))
        return np.frombuffer(response.raw_output_contents[0], np.float32)

    def _check_logits(self, response: pb.ModelInferResponse, where: str) -> None:
        got = np.frombuffer(response.raw_output_contents[0], np.float32) if response.raw_output_contents else None
        if got is None or got.shape != self.expected.shape or not np.allclose(got, self.expected, atol=1e-5):
            self.violations.append(f"{where}: wrong answer to the correct request: {got}")

    def run(self, rpc: str, data: bytes) -> str:
        """Send one case and a correct request after it; returns the case's status name."""
        start = time.monotonic()
        code = self._stream(data) if rpc == STREAM else self._unary(rpc, data)
        elapsed = time.monotonic() - start
        self.slowest = max(self.slowest, elapsed)
        self.counts[f"{rpc if rpc == STREAM else 'unary'}:{code}"] += 1
        if code in SERVER_FAULTS:
            self.violations.append(f"{rpc}: {code} for a client's fault ({len(data)} bytes: {data[:80]!r})")
        if elapsed >= CLIENT_DEADLINE * 0.9:
            self.violations.append(f"{rpc}: no answer in {elapsed:.1f} s ({len(data)} bytes: {data[:80]!r})")
        if rpc != STREAM:  # a stream case carries its own correct request
            try:
                response = self.calls["ModelInfer"](self.good, timeout=CLIENT_DEADLINE)
                self._check_logits(pb.ModelInferResponse.FromString(response), f"after {rpc}")
            except grpc.RpcError as exc:
                self.violations.append(f"after {rpc}: the correct request failed: {exc.code().name} {exc.details()}")
        return code

    def _unary(self, rpc: str, data: bytes) -> str:
        try:
            self.calls[rpc](data, timeout=CLIENT_DEADLINE)
            return "OK"
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                self.violations.append(f"{rpc}: {exc.code().name}: {exc.details()[:300]}")
            return exc.code().name

    def _stream(self, data: bytes) -> str:
        """The case as a stream's first frame, a correct request as its second: two answers, the
        correct one right, and the stream ends OK."""
        try:
            answers = list(self.stream(iter([data, self.good]), timeout=CLIENT_DEADLINE))
        except grpc.RpcError as exc:
            self.violations.append(f"stream ended with {exc.code().name}: {exc.details()[:300]}")
            return exc.code().name
        answers = [pb.ModelStreamInferResponse.FromString(a) for a in answers]
        if len(answers) != 2:
            self.violations.append(f"stream: {len(answers)} answers to 2 requests")
            return "WRONG_COUNT"
        good = [a for a in answers if a.infer_response.id == CHECK_ID and not a.error_message]
        if not good:
            self.violations.append(f"stream: no answer to the correct request: {[a.error_message for a in answers]}")
        else:
            self._check_logits(good[0].infer_response, "stream")
        case = next((a for a in answers if a is not (good[0] if good else None)), answers[0])
        if not case.error_message:
            return "OK"
        status = case.infer_response.parameters["guard_status"].string_param or "NO_STATUS"
        if status in SERVER_FAULTS or status == "NO_STATUS":
            self.violations.append(f"stream answer {status}: {case.error_message[:300]}")
        return status


def fuzz(target: str, cases_to_run: int, seed: int | None = None, stop_on_violation: bool = False) -> Fuzzer:
    """Run `cases_to_run` hypothesis cases against `target` (generation only: no shrinking, no
    database, so the run is one pass over fresh cases; `seed` repeats a run)."""
    fuzzer = Fuzzer(target)

    @settings(
        max_examples=cases_to_run,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def property_(case):
        rpc, data = case
        before = len(fuzzer.violations)
        fuzzer.run(rpc, data)
        if stop_on_violation and len(fuzzer.violations) > before:
            raise AssertionError("\n".join(fuzzer.violations[before:]))

    if seed is not None:
        property_ = hypothesis.seed(seed)(property_)
    property_()
    return fuzzer


def main(argv: list[str] | None = None) -> int:
    from benchmarks.overload import launch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--repository", type=Path, default=Path("examples") / "guard_examples" / "repository")
    parser.add_argument("--target", help="fuzz a running gateway (host:port) instead of starting one")
    parser.add_argument("--seed", type=int, help="repeat the run of this seed")
    args = parser.parse_args(argv)

    def report(fuzzer: Fuzzer, seconds: float, log: str | None = None) -> int:
        total = sum(fuzzer.counts.values())
        print(f"{total} cases in {seconds:.0f} s; slowest answer {fuzzer.slowest * 1e3:.0f} ms")
        by_code = collections.Counter()
        for key, count in fuzzer.counts.items():
            by_code[key.split(":", 1)[1]] += count
        print("answers by status:", ", ".join(f"{code} {n}" for code, n in by_code.most_common()))
        print("by call:", ", ".join(f"{key} {n}" for key, n in sorted(fuzzer.counts.items())))
        if log is not None:
            print(f"gateway log: {log.count(chr(10))} lines, {log.count('Traceback')} tracebacks")
        print(f"violations: {len(fuzzer.violations)}")
        for violation in fuzzer.violations[:20]:
            print("  " + violation)
        return 1 if fuzzer.violations else 0

    start = time.monotonic()
    if args.target:
        fuzzer = fuzz(args.target, args.cases, args.seed)
        return report(fuzzer, time.monotonic() - start)
    with launch(args.repository) as (target, _, log):
        fuzzer = fuzz(target, args.cases, args.seed)
        fuzzer.close()
        text = log.read_text()
    log.unlink()
    return report(fuzzer, time.monotonic() - start, text)


if __name__ == "__main__":
    sys.exit(main())
