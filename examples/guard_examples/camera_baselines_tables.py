"""The tables `python -m guard_examples.camera_baselines` prints and writes: clean frames flagged per
camera and condition, and the attacks detected at the served thresholds, before and after an hour
of poisoning."""

from __future__ import annotations


def models_of(results: dict) -> list[str]:
    """The models a run measured, in the order it ran them (every camera's report holds its
    calibration and one entry per model)."""
    return list(dict.fromkeys(m for report in results.values() for m in report if m != "calibration"))


def clean_table(results: dict, conditions: list[str]) -> list[str]:
    lines = []
    for model in models_of(results):
        rows = [(held, r[model]["clean"]) for held, r in results.items() if model in r]
        if not rows:
            continue
        lines += [
            f"**{model}**, clean frames after the warm-up (flagged/frames, rate; 95% upper bound)",
            "",
            "| camera | " + " | ".join(conditions) + " |",
            "|---|" + "---|" * len(conditions),
        ]
        photo_rows = {held: r[model]["photos"] for held, r in results.items() if "photos" in r.get(model, {})}
        for held, by in rows:
            lines.append(
                f"| {held} | "
                + " | ".join(
                    f"{by[c]['flagged']}/{by[c]['frames']} ({100 * by[c]['rate']:.1f}%; <= "
                    f"{100 * by[c]['upper_95']:.1f}%)"
                    for c in conditions
                )
                + " |"
            )
        lines.append("")
        lines += [
            f"Flagged clean frames of {held}, by the detector named in guard_flagged_by: "
            + "; ".join(f"{c} {by[c].get('flagged_by', {})}" for c in conditions if by[c]["flagged"])
            for held, by in rows
            if any(by[c]["flagged"] for c in conditions)
        ] + [""]
        lines += [
            f"Single photos without a warm-up, judged against the factory calibrated without {held}: "
            f"{p['flagged']}/{p['frames']}"
            for held, p in photo_rows.items()
        ] + [""]
    return lines


def attack_table(results: dict) -> list[str]:
    lines = [
        "**Attacks at the served thresholds** (detected/successful; success/eligible)",
        "",
        "| camera | model | attack | detected | success | after 1 h of poisoning |",
        "|---|---|---|---|---|---|",
    ]
    for held, r in results.items():
        for model in models_of(results):
            if model not in r:
                continue
            poisoned = r[model]["poisoned"]
            for key, a in r[model]["attacks"].items():
                if key == "clean targets":
                    continue
                after = poisoned.get(key)
                after_text = "" if after is None else f"{after['detected']}/{after['success']}"
                lines.append(
                    f"| {held} | {model} | {key} | {a['detected']}/{a['success']} | "
                    f"{a['success']}/{a['eligible']} | {after_text} |"
                )
    lines.append("")
    drifts = {
        f"{held} {m}": round(r[m]["poisoned"]["drift_spreads"], 2)
        for held, r in results.items()
        for m in models_of(results)
        if m in r
    }
    return lines + [f"Drift reached by the poisoning camera (spreads): {drifts}", ""]
