"""Which combination rule the demo ships, chosen the way a defender can: on attacks against TRAIN
images (never the test split), with thresholds from the clean calibration split.

    python -m guard_examples.ensemble_choice [--model examples/guard_examples/repository/digits] [--samples 300]

Scores a calibrated model directory's detectors in process on the clean calibration split and on
successful PGD (eps 0.1, 0.3), BIM (eps 0.3), CW-L2 and DeepFool examples of the first `samples`
train images (the same torchattacks settings as `guard evaluate`), then prints, for 5% and 1%
target false-positive rates, the detection rate of each combination rule and of each detector
alone. Every rule's threshold is fitted on the clean calibration scores only:

- union: any detector over its threshold, thresholds sharing the budget (guard.detection.thresholds);
- fisher: -2 sum log p (guard.detection.ensemble.Fisher, p-values with the exponential tail);
- tippett: the smallest p-value; cauchy: sum tan((1/2 - p) pi); hmp: sum 1/p (the same p-values,
  a leave-one-out threshold on the calibration rows as Fisher's);
- omnibus: fisher OR tippett, the two thresholds sharing the budget (guard.detection.ensemble, shipped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from guard.api import (
    Fisher,
    GuardPipeline,
    OnnxRuntimeBackend,
    References,
    Union,
    allowed_exceedances,
    build_detectors,
    load_model_config,
    rates,
    score_detectors,
    threshold_for,
)
from guard_examples.digits_data import load_split
from guard_examples.paths import REPOSITORY, WORKSPACE

ROOT = WORKSPACE
SURROGATE = REPOSITORY / "digits_fp32" / "model.onnx"  # the FP32 network `digits` quantizes
ATTACKS = ("pgd_eps0.1", "pgd_eps0.3", "bim_eps0.3", "cw", "deepfool")
# The other p-value combinations tried; fisher and omnibus are guard.detection.ensemble's own.
STATISTICS = {
    "tippett": Fisher.min_p_statistic,
    "cauchy": lambda p: np.sum([np.tan((0.5 - v) * np.pi) for v in p.values()], axis=0),
    "hmp": lambda p: np.sum([1.0 / v for v in p.values()], axis=0),
}


def rules(calibration: dict[str, np.ndarray], target: float) -> dict:
    """Each rule as a function scores -> flags, fitted on clean calibration scores."""
    union = Union.fit(calibration, target)
    fitted = {"union": lambda s: rates.flagged(union.ratio(s), 1.0)}
    reference = Fisher.fit(calibration, target)
    fitted["fisher"] = lambda s: rates.flagged(reference.ratio(s), 1.0)
    n = len(next(iter(calibration.values())))
    loo = {
        k: Fisher.empirical_p(reference.references[k], np.asarray(v, np.float64), loo=True)
        for k, v in calibration.items()
    }
    for name, statistic in STATISTICS.items():
        threshold = threshold_for(statistic(loo), allowed_exceedances(n, target))
        fitted[name] = lambda s, f=statistic, t=threshold: rates.flagged(f(reference.p_values(s)), t)
    omnibus = Fisher.fit(calibration, target, omnibus=True)
    fitted["omnibus"] = lambda s: rates.flagged(omnibus.ratio(s), 1.0)
    for name in calibration:
        threshold = Union.fit({name: calibration[name]}, target).thresholds[name]
        fitted[f"{name} alone"] = lambda s, k=name, t=threshold: rates.flagged(s[k], t)
    return fitted


def main() -> None:
    from guard.api import attacks as atk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPOSITORY / "digits")
    parser.add_argument("--samples", type=int, default=300, help="train images to attack")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_model_config(args.model)
    detectors = build_detectors(config.path, config.detection.detectors)
    detection = config.detection
    guarded = detection.guarded_input
    pipeline = GuardPipeline(
        OnnxRuntimeBackend.open(config.model_file),
        detectors,
        guarded_input=guarded,
        logits_output=detection.logits_output,
        output_names=[s.name for s in config.outputs],
        device=torch.device("cpu"),
        features_output=detection.features_output,
    )
    judges = [d.name for d in detectors if not d.monitor]
    x_cal, _ = load_split("calibration")
    scores, _ = score_detectors(pipeline, References({guarded: np.array(x_cal)}), desc="clean calibration")
    calibration = {k: scores[k] for k in judges}
    x, y = load_split("train")
    x, y = np.array(x[: args.samples]), y[: args.samples]
    surrogate, specs = atk.load_surrogate(SURROGATE), {s.key: s for s in atk.attack_suite()}
    attacked = {}
    for key in ATTACKS:
        adversarial = References({guarded: atk.run_attack(specs[key], surrogate, x, y)})
        scores, logits = score_detectors(pipeline, adversarial, desc=key)
        fooled = logits.argmax(1) != y
        attacked[key] = {k: scores[k][fooled] for k in judges}
    for target in (0.05, 0.01):
        fitted = rules(calibration, target)
        print(
            f"\nTarget FPR {target:g}: detection of successful examples on train images "
            f"(clean calibration flag rate in the last column)\n"
        )
        print("| rule | " + " | ".join(ATTACKS) + " | mean | clean (calibration) |")
        print("|---|" + "---|" * (len(ATTACKS) + 2))
        for name, flags in fitted.items():
            rates = [float(flags(attacked[k]).mean()) for k in ATTACKS]
            print(
                f"| {name} | "
                + " | ".join(f"{r:.3f}" for r in rates)
                + f" | {np.mean(rates):.3f} | {float(flags(calibration).mean()):.3f} |"
            )


if __name__ == "__main__":
    main()
