"""What scripts/mutation.py mutates, against which tests, and the survivors judged equivalent: the
data the tool reads, kept apart from the tool so that a module added to the core is one entry here."""

from __future__ import annotations

# Module -> the tests that exercise it (unit tests first: `-x` stops at the first failure, so a
# mutant the fast tests catch never starts a server).
TARGETS: dict[str, tuple[str, ...]] = {
    "guard/serving/policy.py": ("tests/serving/test_policy.py", "tests/serving/test_verdicts_live.py"),
    "guard/serving/dataplane.py": ("tests/serving", "tests/serving/transport"),
    "guard/serving/batching.py": (
        "tests/serving/test_batching.py",
        "tests/serving/test_admission.py",
        "tests/serving/transport",
    ),
    "guard/serving/queueing.py": (
        "tests/serving/test_batching.py",
        "tests/serving/test_cameras.py",
        "tests/serving/test_admission.py",
    ),
    "guard/serving/runtime.py": ("tests/serving", "tests/serving/transport", "tests/backends/remote"),
    # The pieces runtime.py wires together, each against the tests that reach its behaviour.
    "guard/serving/judging.py": (
        "tests/serving/test_judging.py",
        "tests/serving/test_verdicts_live.py",
        "tests/serving/test_policy.py",
        "tests/serving/test_failures.py",
        "tests/serving/test_cameras.py",
        "tests/serving/test_baselines_live.py",
    ),
    "guard/serving/fail_open.py": ("tests/serving/test_failures.py", "tests/serving/test_policy.py"),
    "guard/serving/execution.py": (
        "tests/serving/test_failures.py",
        "tests/serving/test_verdicts_live.py",
        "tests/serving/test_shapes.py",
        "tests/serving/test_metrics.py",
        "tests/serving/test_cameras.py",
        "tests/serving/test_baselines_live.py",
        "tests/serving/test_runtime.py",
        "tests/backends/remote/test_guard_chain.py",
        # What the query-attack check reads of a batch: the decoded frames' thumbnails.
        "tests/security/test_image_query_attacks.py",
    ),
    "guard/serving/forwarding.py": (
        "tests/serving/test_failures.py",
        "tests/serving/test_policy.py",
        "tests/serving/test_metrics.py",
        "tests/backends/remote/test_guard_chain.py",
        "tests/backends/remote/test_upstream_status.py",
    ),
    # The request contract and the wire: the transport tests and the serving tests that send bad
    # requests; the rest of tests/serving never reaches a check these modules make, and made each
    # surviving mutant cost the whole serving suite.
    "guard/serving/validation.py": (
        "tests/serving/transport",
        "tests/serving/test_shapes.py",
        "tests/serving/test_logs_and_codes.py",
        "tests/serving/test_image_ingest.py",
        "tests/text/test_string_preprocess.py",
    ),
    "guard/serving/host_calibration.py": (
        "tests/serving/test_host_calibration.py",
        "examples/tests/test_quantization.py",
    ),
    # The detection modules run against the serving tests that reach them, not all of
    # tests/serving: a survivor runs every listed test, and the whole serving suite made one
    # module take hours.
    "guard/detection/pipeline.py": (
        "tests/detection",
        "tests/serving/test_image_ingest.py",
        "tests/serving/test_metrics.py",
        "tests/serving/test_shapes.py",
        "tests/tools/test_calibrate_dir.py",
        "tests/serving/test_verdicts_live.py",
        "tests/serving/test_failures.py",
        "tests/serving/test_host_calibration.py",
        "tests/backends/test_torch_backend.py",
    ),
    "guard/detection/verdicts.py": (
        "tests/detection",
        "tests/serving/test_verdicts_live.py",
        "tests/serving/test_policy.py",
        "tests/serving/test_failures.py",
    ),
    "guard/detection/ensemble.py": (
        "tests/detection",
        "tests/serving/test_verdicts_live.py",
        "tests/serving/test_host_calibration.py",
    ),
    "guard/detection/thresholds.py": ("tests/detection",),
    "guard/detection/bounds.py": ("tests/detection",),
    "guard/protocol/codec.py": (
        "tests/protocol",
        "tests/serving/transport",
        "tests/serving/test_shapes.py",
        "tests/serving/test_logs_and_codes.py",
        "tests/backends/remote",
    ),
    # The query-attack check: the store and its matching, unit tests first, then the live gateway.
    "guard/detection/queries.py": (
        "tests/detection/test_query_fingerprints.py",
        "tests/detection/test_query_distance.py",
        "tests/benchmarks/test_adaptive_queries.py",
        "tests/security/test_distance_queries.py",
        "tests/serving/test_query_attacks_live.py",
        "tests/security/test_text_query_attacks.py",
    ),
    "guard/detection/query_distance.py": (
        "tests/detection/test_query_distance.py",
        "tests/security/test_distance_queries.py",
    ),
    "guard/backends/remote/circuit.py": (
        "tests/backends/remote/test_circuit.py",
        "tests/backends/remote/test_blackhole.py",
        "tests/backends/remote/test_faults.py",
    ),
}

# Survivors no test can kill because the program behaves the same: (module, the mutated line as
# mutmut shows it after the edit, why). Matched on the module and the line's new text.
_CIRCUIT = "guard/backends/remote/circuit.py"
_NAMES = "state names are only compared with each other, never shown or stored"
_DEFAULTS = "the product always passes both (RemoteSettings' circuit_failures and circuit_reset_s)"
_VERDICTS = "guard/detection/verdicts.py"
_ENSEMBLE = "guard/detection/ensemble.py"
_THRESHOLDS = "guard/detection/thresholds.py"
_BOUNDS = "guard/detection/bounds.py"
_PIPELINE = "guard/detection/pipeline.py"
_QUERIES = "guard/detection/queries.py"
_DISTANCE = "guard/detection/query_distance.py"
_ONE_COPY = "with one copy, concatenating or repeating it gives the same values (only a copy more)"
EQUIVALENT: list[tuple[str, str, str]] = [
    # Annotations of local variables are never evaluated (PEP 526), so a mutated one changes nothing.
    *(
        (module, line, "a local variable's annotation: never evaluated")
        for module, line in (
            ("guard/serving/execution.py", "flows: list[str & None] = cameras or [None] * len(requests)"),
            ("guard/serving/execution.py", "results: dict[int, RowsResult & GuardError] = {}"),
            (
                "guard/serving/execution.py",
                "results: dict[int, RowsResult & GuardError] = {i: InvalidInput(why) for i, why in "
                "prepared.failed.items()}",
            ),
            ("guard/serving/execution.py", "answers: list[RowsResult & GuardError] = list(served)"),
            ("guard/serving/forwarding.py", "answers: list[RowsResult & GuardError] = list(served)"),
        )
    ),
    (
        "guard/serving/runtime.py",
        "await asyncio.to_thread(self._executor.shutdown, wait=False)",
        "the batcher has finished every batch when this line runs (its close returned True), so the "
        "workers are idle and exit on the shutdown signal either way; waiting only joins them "
        "microseconds earlier (test_runtime's no-worker-left test catches a missing shutdown, and this "
        "mutant only when it wins that race)",
    ),
    (
        "guard/serving/execution.py",
        "query_rows: np.ndarray & None",
        "a dataclass field's annotation: a string under from __future__ import annotations, never evaluated",
    ),
    (
        "guard/serving/execution.py",
        "Forward = None",
        "a type alias read only by annotations, which are never evaluated (from __future__ import annotations)",
    ),
    (
        "guard/serving/fail_open.py",
        "result.scores = None",
        "no scores, None or empty, read alike: the judge sees falsy scores and answers unchecked",
    ),
    (_PIPELINE, "guarded = torch.cat([x, *extra]) if copies >= 1 else x", _ONE_COPY),
    (_PIPELINE, "return value.repeat(copies, *[1] * (value.dim() - 1)) if copies >= 1 else value", _ONE_COPY),
    (_PIPELINE, "return np.concatenate([value] * copies) if copies >= 1 else value", _ONE_COPY),
    (
        _BOUNDS,
        "deleted: @functools.cache / def allowed_exceedances(n: int, target: float, confidence: float = "
        "DEFAULT_CONFIDENCE) -> int:",
        "a cache: the same answers, computed again",
    ),
    (
        _BOUNDS,
        "if beta.cdf(target, c + 1, n - c) <= confidence:",
        "a continuous distribution function equals the confidence exactly on no count that occurs",
    ),
    (
        _BOUNDS,
        "continue",
        "the Beta probability falls as c grows: after the first count that fails, every later "
        "one fails too, so looking on changes nothing",
    ),
    (_THRESHOLDS, "MIN_THRESHOLD = 2e-09", "a floor for scores that are numerical noise: any tiny value serves"),
    (_THRESHOLDS, "@dataclass(frozen=False)", "nothing assigns to a Calibration after it is made"),
    (
        _THRESHOLDS,
        "while allowed >= 0 and not union_ok(dict.fromkeys(scores, allowed))[0]:",
        "no exceedances flag nothing, which is always within the target: the loop stops at 0 either way",
    ),
    (
        _THRESHOLDS,
        "if budget[name] > n:  # already allowed to flag every sample (scores under MIN_THRESHOLD flag none)",
        "a budget of n and of n + 1 give the same threshold (every score above the floor flags)",
    ),
    (
        _ENSEMBLE,
        "min_p_threshold: float & None = None",
        "an annotation: never evaluated under `from __future__ import annotations`",
    ),
    (
        _ENSEMBLE,
        "deleted: @staticmethod / def _count_at_least(reference: np.ndarray, values: np.ndarray) -> np.ndarray:",
        "_count_at_least is only called through the class, where a plain function takes the same arguments",
    ),
    (
        _ENSEMBLE,
        "m = min(max(int(cls.TAIL_FRACTION * n), 1), n + 1)",
        "the cap binds only below 2 references, which fit refuses",
    ),
    (
        _ENSEMBLE,
        "return u, max(float(np.mean(reference[n - m:] - u)), 2e-12), m",
        "a floor against dividing by zero where the tail scores all tie; any tiny floor underflows alike",
    ),
    (
        _ENSEMBLE,
        "upper = torch.searchsorted(reference, s.detach()).clamp(1, n + 1)",
        "s is clamped to the largest reference first, so the index never exceeds n - 1",
    ),
    (
        _ENSEMBLE,
        "weight = (s - lo) / (hi - lo).clamp_min(2e-12)",
        "hi - lo is 0 only where s == lo == hi, and the weight is 0 whatever the floor",
    ),
    (
        _VERDICTS,
        "if span.stop + span.start == 1:",
        "a fast path for 1-row requests: the general path gives the same verdict for every span",
    ),
    (_CIRCUIT, 'CLOSED, OPEN, HALF_OPEN = "XXclosedXX", "open", "half_open"', _NAMES),
    (_CIRCUIT, 'CLOSED, OPEN, HALF_OPEN = "closed", "XXopenXX", "half_open"', _NAMES),
    (_CIRCUIT, 'CLOSED, OPEN, HALF_OPEN = "closed", "open", "XXhalf_openXX"', _NAMES),
    (_CIRCUIT, "def __init__(self, failures: int = 4, reset_s: float = 0.25, clock=time.monotonic):", _DEFAULTS),
    (_CIRCUIT, "def __init__(self, failures: int = 3, reset_s: float = 1.25, clock=time.monotonic):", _DEFAULTS),
    (_CIRCUIT, "self._opened_at = 1.0", "read only while open, and opening sets it first"),
    (_CIRCUIT, "self._opened_at = None", "read only while open, and opening sets it first"),
    (
        _CIRCUIT,
        "state = None  # the common case without the lock: a closed circuit",
        "a fast path: the locked path below gives the same answer",
    ),
    (
        _CIRCUIT,
        "if self._state != CLOSED and not self._failures:",
        "a fast path: open and half-open always have failures counted, and the locked path resets the same",
    ),
    *(
        (
            "guard/serving/validation.py",
            f"for name in islice(names, len({known}) + 2):",
            "a bound that never bites: any len + 1 names hold an unknown or a repeated one, which raises "
            "before a further name is read (test_codec_limits counts the names read)",
        )
        for known in ("known", "declared")
    ),
    (
        "guard/serving/validation.py",
        'if spec.range is not None and array.size and array.dtype.kind in "XXbiufXX":',
        "a membership test of one character: every numeric kind is still in the longer string",
    ),
    (
        "guard/serving/validation.py",
        'return "[" + ", ".join("N" if d == "XXNXX" else "*" if d == -1 else str(d) for d in shape) + "]"',
        'the batch dimension\'s "N" falls through to str(d), which is "N" as well',
    ),
    (
        _DISTANCE,
        "summed: np.ndarray = padded.reshape(len(rows), -2, k).sum(axis=2) / np.float32(np.sqrt(k))",
        "numpy reads any negative size as the one to infer",
    ),
    (
        _DISTANCE,
        "def derive(rows: np.ndarray, answers: np.ndarray, dims: int, chunk: int = 513) -> float:",
        "the chunk bounds memory only: every chunk is compared with every row",
    ),
    (
        _DISTANCE,
        "for start in range(1, len(e), chunk):  # bounded memory: chunk x n distances at a time",
        "distances are symmetric: a row left out of the chunks is still compared with every chunk's rows",
    ),
    (
        _QUERIES,
        "@dataclass(frozen=False)",
        "the settings are read, never assigned; frozen only guards against a future assignment",
    ),
    (
        _QUERIES,
        "distance: float = None",
        "0.0 and None both read as 'not derived' (`not queries.distance`), and hashes never read it",
    ),
    (
        _QUERIES,
        "q = np.clip(np.floor(scaled), 0, settings.levels - 1).astype(np.uint64) - np.uint64(1)",
        "levels are hashed as symbols: any one-to-one relabelling of the levels (here, wrapping "
        "modulo 2**64) keeps equal windows equal and different ones different",
    ),
]
