"""The load gate: a model whose last scan flagged it (or that has no current scan) is refused.

Opt-in per model (`[scan] require_clean = true` in config.toml). Reads only the JSON report, so
serving never imports torch for it.
"""

from __future__ import annotations

import hashlib
import json

from guard.protocol.errors import ConfigError
from guard.serving.model_config import ModelConfig


def check_scan_gate(config: ModelConfig) -> None:
    """Raise ConfigError naming the scan report when the gate is on and the model may not load."""
    if not config.scan.require_clean:
        return
    where = config.path
    if config.model_file is None:
        raise ConfigError(
            where,
            "scan.require_clean",
            "a model file in the model directory to scan (an "
            "upstream in remote mode `through` is scanned where it runs)",
            True,
        )
    report = (config.directory / config.scan.report).resolve()
    if not report.is_file():
        raise ConfigError(
            where,
            "scan.report",
            f"an existing model scan report (run `guard scan-model --model {config.directory} --out {report.parent}`)",
            str(report),
        )
    try:
        scan = json.loads(report.read_text())
        verdict, digest = scan["verdict"], scan["onnx_sha256"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(where, "scan.report", "a scan.json written by guard scan-model", str(report)) from None
    actual = hashlib.sha256(config.model_file.read_bytes()).hexdigest()
    if digest != actual:
        raise ConfigError(
            where,
            "scan.report",
            f"a scan of {config.model_file.name} as it is now (the report {report} scanned another file; rescan)",
            digest[:12],
        )
    if verdict != "clean":
        raise ConfigError(
            where,
            "scan.require_clean",
            f"a model whose last scan is clean; scan report {report} "
            f"flagged class(es) {scan.get('flagged_classes')} as backdoor target(s) "
            f"(anomaly index {scan.get('max_anomaly_index', float('nan')):.2f})",
            verdict,
        )
