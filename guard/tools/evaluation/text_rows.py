"""A text plan's measurements, all through the live gateway: each model's clean calibration and
test texts (the scorers and the served clean flag rate), its out-of-domain clean sets, every
black-box attack on the test texts the served model gets right, and a backdoored model's trigger.

The attacks see only the gateway's answers (text_gateway.GatewayOracle: probabilities from the
returned logits, or labels only), one request per query, as an attacker on the network would;
the gateway serves under policy flag, so every query is answered and none is blocked. A row's
successful examples are the attacked texts the SERVED model misclassifies when sent once more
with guard_explain; the detection columns measure those against the clean test texts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.tools.evaluation import rates as m
from guard.tools.evaluation.client import GatewayClient, Served
from guard.tools.evaluation.plan import Plan, Subject
from guard.tools.evaluation.reference import ModelReference, flag_rate, matches_config, served_flags
from guard.tools.evaluation.subjects import configured_thresholds
from guard.tools.evaluation.text_attacks import TextAttackResult, label_only
from guard.tools.evaluation.text_data import TextSplit
from guard.tools.evaluation.text_gateway import GatewayOracle
from guard.tools.evaluation.text_plan import TextAttackSpec

log = logging.getLogger("guard.tools.evaluation")

EXAMPLES = 4
"""Attacked texts shown per row in the report (successful ones first)."""


def _reference(client: GatewayClient, repository: Path, name: str, calibration: TextSplit, test: TextSplit):
    cal = client.infer_encoded(name, calibration.encoded(), desc=f"{name} calibration")
    started = time.perf_counter()
    served = client.infer_encoded(name, test.encoded(), desc=f"{name} clean test")
    seconds = (time.perf_counter() - started) / max(1, len(test))
    reference = ModelReference(
        name,
        cal,
        served,
        sorted(configured_thresholds(repository / name)),
        load_model_config(repository / name).detection.ensemble.method,
        float((served.predictions == test.y).mean()),
    )
    reference.summary["input_kind"] = "text"
    reference.summary["seconds_per_request"] = seconds
    reference.summary["matches_gateway_thresholds"] = matches_config(repository / name, reference)
    return reference


def _out_of_domain(client: GatewayClient, reference: ModelReference, sets: dict[str, TextSplit]) -> dict[str, Any]:
    """Each clean set's flag rate at the served thresholds and every scorer's at its 1%/5% points."""
    measured = {}
    for key, split in sets.items():
        served = client.infer_encoded(reference.name, split.encoded(), desc=f"{reference.name} {key}")
        measured[key] = {
            "n": len(split),
            "accuracy": float((served.predictions == split.y).mean()),
            "served": flag_rate(served_flags(served)),
            "clean_fpr": {s: sc.clean_fpr(served.scores) for s, sc in reference.scorers.items()},
        }
    return measured


def _examples(results: list[TextAttackResult], served: Served, successful: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(~successful, kind="stable")[:EXAMPLES]
    return [
        {
            "original": results[i].original,
            "adversarial": results[i].adversarial,
            "success": bool(successful[i]),
            "verdict": str(served.verdicts[i]),
            "edits": results[i].edits,
            "queries": results[i].queries,
        }
        for i in order
    ]


def _attack_row(
    client: GatewayClient,
    reference: ModelReference,
    spec: TextAttackSpec,
    texts: list[str],
    labels: np.ndarray,
    eligible: np.ndarray,
    seed: int,
    curves: dict,
) -> dict[str, Any]:
    attack = spec.build()
    started = time.perf_counter()
    with GatewayOracle(client.url, reference.name) as oracle:
        ask = label_only(oracle) if spec.labels_only else oracle
        chosen = [t for t, ok in zip(texts, eligible) if ok]
        attacked = iter(attack.run(ask, chosen, labels[eligible].tolist(), seed=seed))
        results = [next(attacked) if ok else TextAttackResult(t, t, False, 0, 0) for t, ok in zip(texts, eligible)]
        flagged_queries = sum(a.verdict not in (None, "clean") for a in oracle.answers)
        queries = len(oracle.answers)
    seconds = time.perf_counter() - started
    served = client.infer_encoded(reference.name, [r.adversarial.encode("utf-8") for r in results], desc=spec.key)
    successful = eligible & (served.predictions != labels) & np.array([r.edits > 0 for r in results])
    kind = "decision-based" if spec.labels_only else "score-based"
    row = reference.row(spec.key, None, kind, served, eligible, successful, None, curves)
    done = [r for r, ok in zip(results, successful) if ok]
    row.update(
        {
            "params": spec.params,
            "queries_mean": float(np.mean([r.queries for r in done])) if done else None,
            "edits_mean": float(np.mean([r.edits for r in done])) if done else None,
            # Under policy block the attacker would have been refused at its first flagged query.
            "queries_flagged": {"flagged": flagged_queries, "n": queries},
            "attack_seconds": seconds,
            "examples": _examples(results, served, successful),
        }
    )
    return row


def _trigger_row(
    client: GatewayClient, reference: ModelReference, subject: Subject, test: TextSplit, seed: int, curves: dict
) -> dict[str, Any]:
    text = subject.text
    assert text is not None and text.trigger is not None and text.target is not None
    keep = test.y != text.target
    triggered = text.trigger.apply([t for t, k in zip(test.texts, keep) if k], seed)
    served = client.infer_encoded(subject.name, [t.encode("utf-8") for t in triggered], desc=f"trigger {subject.name}")
    eligible, successful = m.success(None, served.predictions, test.y[keep], target=text.target)
    row = reference.row(f"trigger_{subject.name}", None, "trigger", served, eligible, successful, None, curves)
    row.update({"target": text.target, "trigger_text": text.trigger.text, "trigger_at": text.trigger.at})
    return row


def evaluate_texts(client: GatewayClient, repository: Path, plan: Plan, options: Any) -> tuple[dict, dict]:
    """All rows and per-model summaries of a text plan, plus ROC inputs per row."""
    from guard.tools.evaluation.run import sample

    calibration, test = plan.text_split("calibration"), plan.text_split("test")
    rows: list[dict] = []
    curves: dict = {}
    summaries = {}
    picks = {}
    for subject in plan.texts:
        reference = _reference(client, repository, subject.name, calibration, test)
        reference.summary["out_of_domain"] = _out_of_domain(client, reference, plan.out_of_domain or {})
        summaries[subject.name] = reference.summary
        assert subject.text is not None
        if subject.text.trigger is not None:
            rows.append(_trigger_row(client, reference, subject, test, options.seed, curves))
            continue
        # the rows an attacker would attack: every test text, or only those of the attacked classes
        attacked = subject.text.attack_labels
        candidates = np.arange(len(test)) if attacked is None else np.flatnonzero(np.isin(test.y, attacked))
        if not len(candidates):
            raise ConfigError(plan.path, f"{subject.name}.attack_labels", "labels that some test text has", attacked)
        pick = candidates[sample(len(candidates), options)]
        picks[subject.name] = pick.tolist()
        texts, labels = [test.texts[i] for i in pick], test.y[pick]
        eligible = reference.test.predictions[pick] == labels
        for spec in plan.text_attacks:
            rows.append(_attack_row(client, reference, spec, texts, labels, eligible, options.seed, curves))
            log.info("%s on %s: ASR %s, served %s", spec.key, subject.name, rows[-1]["asr"], rows[-1]["served"])
    samples = max((len(p) for p in picks.values()), default=0)
    return {"samples": samples, "sample_indices": picks, "models": summaries, "rows": rows}, curves
