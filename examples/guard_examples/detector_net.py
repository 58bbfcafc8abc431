"""Recipe for the `detector_network` detector's weights: an MLP on the served model's features.

    python -m guard_examples.detector_net [--model-dir DIR] [--out DIR/detector_net.npz]

Trained on ONE attack family, PGD (L-inf) from the FP32 torch surrogate, so that evaluating it on
other attacks measures generalisation rather than memorisation. Positives are the PGD examples
(train split, eps in {0.1, 0.2, 0.3}, several step counts) that fool the SERVED model; negatives
are the clean train images plus a Gaussian-noised copy of each, so the network cannot get away
with flagging "any perturbation". Features come from the served (INT8 QDQ) ONNX model, exactly
as the guard sees them. The calibration split is used only to report detection accuracy; the
test split is never touched.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from tqdm import tqdm

from guard.api import NETWORK_KEYS, expose_features, rates, untargeted_pgd
from guard_examples.digits_data import load_split
from guard_examples.digits_net import DigitsNet, load_digits_net
from guard_examples.paths import ARTIFACTS, REPOSITORY, WORKSPACE
from guard_examples.train_utils import single_thread

log = logging.getLogger(__name__)

REPO_ROOT = WORKSPACE
SURROGATE = ARTIFACTS / "digits_fp32.pt"
EPSILONS = (0.1, 0.2, 0.3)
STEPS = (5, 10, 20, 40)
NOISE_SIGMA = 0.05
"""Upper end of the clean negatives' Gaussian noise (sigma drawn uniformly in [0, this])."""
HIDDEN, EPOCHS = 32, 150
"""H in {16, 32, 64} x epochs in {50, 150} gave calibration TPRs (at 5% clean FPR) within ~2 points of
each other except 16/50; 32/150 is the small end of that plateau."""


def served_outputs(onnx_path: Path, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) of the served ONNX model for x, via a temporary copy that
    exposes the features (the model directory is left untouched)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model.onnx"
        features = expose_features(Path(onnx_path), copy)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # reproducible reductions
        session = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
    name, logits = session.get_inputs()[0].name, session.get_outputs()[0].name
    out = [
        session.run([logits, features], {name: np.ascontiguousarray(x[i : i + batch_size], np.float32)})
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]).astype(np.float32)


def load_surrogate(path: Path = SURROGATE) -> DigitsNet:
    return load_digits_net(path)


def pgd_examples(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    copies: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` PGD examples per image, each at a random (eps, steps) from EPSILONS x STEPS with
    the PGD paper's step size 2.5 * eps / steps; returns (x_adv, y, eps) in a seeded, fixed order."""
    model.eval()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    idx = np.tile(np.arange(len(x)), copies)
    eps = rng.choice(EPSILONS, size=len(idx))
    steps = rng.choice(STEPS, size=len(idx))
    adv = np.empty((len(idx), *x.shape[1:]), np.float32)
    groups = [(e, s) for e in EPSILONS for s in STEPS]
    with single_thread():
        for e, s in tqdm(groups, desc="pgd", disable=not progress):
            members = np.flatnonzero((eps == e) & (steps == s))
            for start in range(0, len(members), batch_size):
                rows = members[start : start + batch_size]
                xb, yb = torch.from_numpy(np.array(x[idx[rows]])), torch.from_numpy(np.array(y[idx[rows]]))
                adv[rows] = untargeted_pgd(model, xb, yb, float(e), int(s), 2.5 * float(e) / int(s), gen).numpy()
    return adv, y[idx], eps


def noisy(x: np.ndarray, seed: int, sigma: float = NOISE_SIGMA) -> np.ndarray:
    """x plus Gaussian noise of a per-image sigma in [0, sigma], clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.0, sigma, size=(len(x),) + (1,) * (x.ndim - 1))
    return np.clip(x + scale * rng.standard_normal(x.shape), 0.0, 1.0).astype(np.float32)


def mlp_scores(params: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """The detector's sigmoid score in numpy (float64), the reference for DetectorNetwork."""
    z = (np.asarray(features, np.float64) - params["mean"]) / params["std"]
    hidden = np.maximum(z @ params["w1"].T.astype(np.float64) + params["b1"], 0.0)
    return 1.0 / (1.0 + np.exp(-(hidden @ params["w2"].T + params["b2"])[:, 0]))


def train_detector(
    features_clean: np.ndarray,
    features_adv: np.ndarray,
    hidden: int = HIDDEN,
    epochs: int = EPOCHS,
    seed: int = 0,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Train Linear(D, hidden)-ReLU-Linear(hidden, 1) to tell adversarial (1) from clean (0) features;
    returns the arrays DetectorNetwork loads (float32). Classes are balanced by a positive weight."""
    clean, adv = np.asarray(features_clean, np.float32), np.asarray(features_adv, np.float32)
    mean = clean.mean(0)
    std = clean.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # dead ReLU units: leave them unscaled
    x = torch.from_numpy((np.concatenate([clean, adv]) - mean) / std)
    t = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))])
    pos_weight = torch.tensor(len(clean) / max(len(adv), 1))
    with torch.random.fork_rng(devices=[]), single_thread():  # seeded init without touching global RNG state
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in tqdm(range(epochs), desc="detector epochs", disable=not progress):
            for batch in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = F.binary_cross_entropy_with_logits(net(x[batch]).squeeze(-1), t[batch], pos_weight=pos_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
    w1, b1, w2, b2 = (p.detach().numpy().astype(np.float32) for p in net.parameters())
    return dict(zip(NETWORK_KEYS, (mean.astype(np.float32), std, w1, b1, w2, b2)))


def _pgd_features(
    onnx_path: Path, model: torch.nn.Module, split: str, seed: int, copies: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PGD features (only those that fool the served model) with their eps, clean features of
    the split, and the share of PGD examples that fooled."""
    x, y = load_split(split)
    x_adv, y_adv, eps = pgd_examples(model, x, y, seed, copies, progress=progress)
    logits, features = served_outputs(onnx_path, x_adv)
    fooled = logits.argmax(1) != y_adv
    return features[fooled], eps[fooled], served_outputs(onnx_path, x)[1], float(fooled.mean())


def build(model_dir: Path, out: Path, seed: int = 0, copies: int = 3, progress: bool = True) -> dict:
    """Generate the data, train, save `out`; returns the metrics (accuracies at score 0.5)."""
    onnx_path = model_dir / "model.onnx"
    model = load_surrogate()
    adv_train, _, clean_train, fool_train = _pgd_features(onnx_path, model, "train", seed, copies, progress)
    x_train, _ = load_split("train")
    noisy_train = served_outputs(onnx_path, noisy(np.array(x_train), seed))[1]
    params = train_detector(np.concatenate([clean_train, noisy_train]), adv_train, seed=seed, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **params)
    log.info("wrote %s: %d PGD vs %d clean/noisy training features", out, len(adv_train), len(clean_train) * 2)

    adv_cal, eps_cal, clean_cal, fool_cal = _pgd_features(onnx_path, model, "calibration", seed + 1, 1, progress)
    metrics = {
        "n_adv_train": len(adv_train),
        "n_clean_train": len(clean_train) + len(noisy_train),
        "fool_rate_train": fool_train,
        "n_adv_calibration": len(adv_cal),
        "n_clean_calibration": len(clean_cal),
        "fool_rate_calibration": fool_cal,
    }
    for split, clean, adv in (("train", clean_train, adv_train), ("calibration", clean_cal, adv_cal)):
        clean_s, adv_s = mlp_scores(params, clean), mlp_scores(params, adv)
        metrics[f"{split}_clean_accuracy"] = float((clean_s < 0.5).mean())
        metrics[f"{split}_adv_accuracy"] = float((adv_s >= 0.5).mean())
        metrics[f"{split}_balanced_accuracy"] = (
            metrics[f"{split}_clean_accuracy"] + metrics[f"{split}_adv_accuracy"]
        ) / 2
    # What the guard will see: the threshold that flags 5% of clean calibration images.
    threshold = rates.operating_threshold(mlp_scores(params, clean_cal), 0.05)
    adv_flagged = rates.flagged(mlp_scores(params, adv_cal), threshold)
    metrics["calibration_adv_tpr_at_5pct_clean"] = float(adv_flagged.mean())
    metrics.update(
        {f"calibration_adv_tpr_at_5pct_clean_eps_{e}": float(adv_flagged[eps_cal == e].mean()) for e in EPSILONS}
    )
    metrics["train_noisy_clean_accuracy"] = float((mlp_scores(params, noisy_train) < 0.5).mean())
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPOSITORY / "digits")
    parser.add_argument("--out", type=Path, default=None, help="default: MODEL_DIR/detector_net.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    out = args.out or args.model_dir / "detector_net.npz"
    metrics = build(args.model_dir, out, seed=args.seed)
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
