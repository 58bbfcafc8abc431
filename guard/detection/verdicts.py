"""One verdict per request from its rows' detector scores: the worst row decides, flags are unioned.

Monitor detectors are reported with the others but never flag. The combiner decides whether a
row is flagged: a Union (each detector against its own threshold) or a Fisher/omnibus ensemble,
whose statistic decides while `flagged_by` names the detectors over their own thresholds (or,
when none is, the most unusual one).
"""

from __future__ import annotations

import numpy as np

from guard.detection.detectors import Detector
from guard.detection.ensemble import Fisher, Union
from guard.protocol.types import ADVERSARIAL, CLEAN, TRIGGER, Verdict


def union_of(detectors: list[Detector]) -> Union:
    """The union of the detectors that judge (monitors excluded), at their configured thresholds."""
    return Union({d.name: d.calibrated_threshold() for d in detectors if not d.monitor})


def verdicts(
    detectors: list[Detector], scores: dict[str, np.ndarray], rows: list[slice], combiner: Fisher | Union | None = None
) -> list[Verdict]:
    """One verdict per request (a slice of rows). Without a combiner the judging detectors combine
    as their union."""
    if not detectors:
        return [Verdict(CLEAN, 0.0) for _ in rows]
    names = [d.name for d in detectors]
    judges = [i for i, d in enumerate(detectors) if not d.monitor]
    judge_names = [names[i] for i in judges]
    table = np.stack([scores[n] for n in names])  # [D, B], every detector
    own = union_of(detectors)
    ratios = own.ratios(scores)
    fired = ratios >= 1.0  # [judges, B]: each judge against its own threshold
    if combiner is None or isinstance(combiner, Union):
        row_score = own.ratio(scores, ratios) if combiner is None else combiner.ratio(scores)
    else:
        p_values = combiner.p_values(scores)
        row_score = combiner.ratio(scores, p_values)
        flagged = row_score >= 1.0
        fired &= flagged
        # A flagged row on which no detector passes its own threshold names its most unusual one.
        unnamed = flagged & ~fired.any(axis=0)
        if unnamed.any():
            smallest = np.argmin(np.stack([p_values[n] for n in judge_names]), axis=0)
            fired[smallest[unnamed], np.flatnonzero(unnamed)] = True
    # Python lists once: the per-request loop below then costs no numpy calls for 1-row requests.
    table_rows, fired_rows, score_rows = table.T.tolist(), fired.T.tolist(), row_score.tolist()
    trigger = [detectors[i].verdict == TRIGGER for i in judges]
    results = []
    for span in rows:
        if span.stop - span.start == 1:
            row = span.start
            score, row_fired, row_scores = score_rows[row], fired_rows[row], table_rows[row]
        else:
            score = float(row_score[span].max())
            row_fired = fired[:, span].any(axis=1).tolist()
            row_scores = table[:, span].max(axis=1).tolist()
        by = tuple(n for n, f in zip(judge_names, row_fired) if f)
        verdict = (TRIGGER if any(t for t, f in zip(trigger, row_fired) if f) else ADVERSARIAL) if by else CLEAN
        results.append(Verdict(verdict, float(score), by, dict(zip(names, row_scores))))
    return results
