"""The gateway's own view of a load: scrape `/metrics` before and after, difference the histograms.

Per stage (queue, squeeze, backend, detect, ...) the difference of sums and counts gives the time
spent there during the load; divided by the requests served it is that stage's cost per request,
which is what throughput pays for (per-batch stages are amortised over the batch).
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Snapshot:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _delta(before: Snapshot, after: Snapshot, name: str, model: str) -> dict[tuple, float]:
    """Samples named `name` for `model`, after minus before, keyed by their other labels."""
    out = {}
    for (sample, labels), value in after.items():
        label_map = dict(labels)
        if sample == name and label_map.get("model") == model:
            key = tuple((k, v) for k, v in labels if k not in ("model", "le"))
            out[key] = value - before.get((sample, labels), 0.0)
    return out


def breakdown(before: Snapshot, after: Snapshot, model: str) -> dict:
    """What the gateway measured for `model` between two scrapes: requests by code, mean batch
    size, backend rows per request, and per stage: events, mean ms per event, ms per request."""
    requests = defaultdict(float)
    for labels, value in _delta(before, after, "guard_requests_total", model).items():
        requests[dict(labels)["code"]] += value
    served = sum(requests.values())
    sums = _delta(before, after, "guard_stage_duration_seconds_sum", model)
    counts = _delta(before, after, "guard_stage_duration_seconds_count", model)
    stages = {}
    for labels, total in sorted(sums.items()):
        events = counts.get(labels, 0.0)
        stages[dict(labels)["stage"]] = {
            "events": events,
            "mean_ms": 1e3 * total / events if events else 0.0,
            "ms_per_request": 1e3 * total / served if served else 0.0,
        }
    batches = sum(_delta(before, after, "guard_batch_size_count", model).values())
    rows = sum(_delta(before, after, "guard_batch_size_sum", model).values())
    backend_rows = sum(_delta(before, after, "guard_backend_rows_total", model).values())
    in_gateway = sum(_delta(before, after, "guard_request_duration_seconds_sum", model).values())
    return {
        "requests_by_code": dict(requests),
        "mean_batch_size": rows / batches if batches else 0.0,
        "backend_rows_per_row": backend_rows / rows if rows else 0.0,
        "in_gateway_ms": 1e3 * in_gateway / served if served else 0.0,
        "stages": stages,
    }
