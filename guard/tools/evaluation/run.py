"""`guard evaluate --plan PLAN.toml`: build the evaluation repository, serve it, attack, measure, report.

Everything is measured on what a live gateway answers over gRPC: the calibration split (to set
thresholds), the clean test split (realised FPR, AUROC negatives), and every attack and trigger.
What is evaluated (data, surrogate, models, triggers) comes from the plan (plan.py).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.serving.model_config import load_model_config
from guard.tools.credentials import NONE, ClientCredentials
from guard.tools.evaluation import attacks as atk
from guard.tools.evaluation import rates as m
from guard.tools.evaluation.baseline_clock import BaselinesOf
from guard.tools.evaluation.client import GatewayClient
from guard.tools.evaluation.plan import Plan, load_plan
from guard.tools.evaluation.reference import ModelReference, matches_config
from guard.tools.evaluation.subjects import build_repository, configured_thresholds, is_built

log = logging.getLogger("guard.tools.evaluation")

NOTES = [
    "Surrogate transfer: attacks are computed on the plan's surrogate ({surrogate}) run as torch and sent to "
    "the served model, so where the two differ the ASR is that of a white-box-surrogate transfer attack. Square "
    "(score-based black box) queries the surrogate, not the gateway.",
    "The adaptive rows attack the whole guarded pipeline (guard/tools/evaluation/adaptive.py).",
]
IMAGE_NOTES = [
    "Image models: every frame (fit, calibration, test, attacked) is brought to the model's input size by the "
    "gateway's own resize and sent as lossless PNG, one per request, so clean and attacked frames differ only by "
    "the attack (JPEG would re-quantise a perturbation of a few levels away). The attacks are white-box on the "
    "served model's own ONNX run as torch; `surrogate_asr` is their success on it. Success is judged by the rule "
    "each row names, on the boxes or classes the served model returned (guard/tools/evaluation/rules.py).",
    "`examples_<row>.png`: up to four attacked frames per row (successful ones first), the clean frame beside the "
    "attacked one as the gateway answered each (boxes or top-1), framed in the colour of its verdict (green clean, "
    "red adversarial).",
]

TEXT_NOTES = [
    "Text models: every attack is black-box and queries the live gateway, one request per query, seeing only its "
    "answers (probabilities from the returned logits, or labels only for decision-based rows); the gateway serves "
    "under policy flag, so no query is refused. An example counts as successful only if the SERVED model "
    "misclassifies the final text when it is sent once more; `queries_flagged` is the share of the attack's own "
    "queries the gateway flagged, each of which policy block would have refused.",
]


@dataclass
class EvalOptions:
    plan: Path
    """The evaluation plan (TOML): data splits, surrogate, models under test (plan.py)."""
    samples: int | None = None
    """Test rows to attack (default: all; 40 in quick mode)."""
    quick: bool = False
    report_dir: Path = Path("reports/latest")
    workdir: Path | None = None
    connect: str | None = None
    credentials: ClientCredentials = NONE
    """What the client presents to the --connect gateway (the one it starts itself has no security)."""
    seed: int = 0
    ensemble: str = "omnibus"
    """How the evaluation models' detectors combine (guard.detection.ensemble)."""
    attacks: tuple[str, ...] | None = None
    """Restrict the suite to these attack names (fgsm, pgd, ...); None runs all."""
    epsilons: tuple[float, ...] = atk.EPSILONS
    adaptive_steps: int | None = None
    command: str = ""


@contextlib.contextmanager
def _gateway(options: EvalOptions, repository: Path) -> Iterator[tuple[str, BaselinesOf]]:
    """The gateway's address, and each model's per-camera baselines where this process started it
    (simulated conditions drive their clock, guard.tools.evaluation.baseline_clock); a --connect
    gateway's are out of reach."""
    if options.connect:
        yield options.connect, lambda model: None
        return
    from guard.serving.background import BackgroundServer
    from guard.serving.settings import ServerSettings

    settings = ServerSettings(repository=repository, grpc_port=0, metrics_port=-1, policy="flag")
    with BackgroundServer(settings) as server:
        yield server.grpc_url, server.server.baselines


def _surrogate_asr(net, adv: np.ndarray, y: np.ndarray, clean_ok: np.ndarray) -> float | None:
    """The same attack's success rate on the surrogate itself (white-box), for comparison."""
    return m.attack_success_rate(clean_ok, clean_ok & (atk.predict(net, adv) != y))


def _reference(client: GatewayClient, repository: Path, name: str, calibration: tuple, test: tuple) -> ModelReference:
    """A tensor model's clean calibration and test splits through the gateway."""
    cal = client.infer(name, calibration[0], desc=f"{name} calibration")
    served = client.infer(name, test[0], desc=f"{name} clean test")
    return ModelReference(
        name,
        cal,
        served,
        sorted(configured_thresholds(repository / name)),
        load_model_config(repository / name).detection.ensemble.method,
        float((served.predictions == test[1]).mean()),
    )


def sample(count: int, options: EvalOptions) -> np.ndarray:
    """The seeded, sorted test rows that get attacked: --samples of them (40 in quick mode), else all."""
    n = min(options.samples or (40 if options.quick else count), count)
    return np.sort(np.random.default_rng(options.seed).choice(count, n, replace=False))


def evaluate(
    client: GatewayClient, repository: Path, plan: Plan, options: EvalOptions, baselines_of: BaselinesOf | None = None
) -> tuple[dict, dict]:
    """All rows and per-model summaries, plus ROC inputs per row."""
    client.wait_ready(plan.names)
    if plan.images:  # a plan's models are all of one kind (load_plan)
        from guard.tools.evaluation.image_rows import evaluate_images

        return evaluate_images(client, repository, plan, options, baselines_of or (lambda model: None))
    if plan.texts:
        from guard.tools.evaluation.text_rows import evaluate_texts

        return evaluate_texts(client, repository, plan, options)
    calibration_split, test_split = plan.split("calibration"), plan.split("test")
    calibration, test = (calibration_split.x, calibration_split.y), (test_split.x, test_split.y)
    pick = sample(len(test[1]), options)
    n = len(pick)
    x, y = np.array(test[0][pick]), np.array(test[1][pick])
    started = time.perf_counter()
    models = {name: _reference(client, repository, name, calibration, test) for name in plan.names}
    log.info("clean calibration and test splits through the gateway: %.1f s", time.perf_counter() - started)
    for name, model in models.items():  # the 5% thresholds must be the gateway's own configuration
        model.summary["matches_gateway_thresholds"] = matches_config(repository / name, model)
    rows: list[dict] = []
    curves: dict[str, tuple[str, dict]] = {}
    if plan.attacked:
        net = atk.load_surrogate(plan.attack_surrogate())
        for subject in plan.attacked:
            # Row keys name the model only when several are attacked, so one model's keys stay short.
            suffix = f"@{subject.name}" if len(plan.attacked) > 1 else ""
            rows += _attack_rows(
                client,
                models[subject.name],
                repository / subject.name,
                net,
                x,
                y,
                models[subject.name].test.predictions[pick],
                options,
                suffix,
                curves,
                plan.attacks,
            )
    for subject in plan.backdoored:
        trigger, target = subject.backdoor()
        keep = y != target
        served = client.infer(subject.name, trigger.apply(x[keep]), desc=f"send trigger {subject.name}")
        eligible, successful = m.success(None, served.predictions, y[keep], target=target)
        row = models[subject.name].row(
            f"trigger_{subject.name.removeprefix('backdoor_')}",
            None,
            "trigger",
            served,
            eligible,
            successful,
            None,
            curves,
        )
        row["target"] = target
        rows.append(row)
        log.info("%s: ASR %s, ensemble %s", subject.name, row["asr"], row["scorers"]["ensemble"])
    summaries = {name: model.summary for name, model in models.items()}
    return {"samples": n, "sample_indices": pick.tolist(), "models": summaries, "rows": rows}, curves


def _attack_rows(
    client: GatewayClient,
    model: ModelReference,
    directory: Path,
    net,
    x: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    options: EvalOptions,
    suffix: str,
    curves: dict,
    extra: tuple[atk.AttackSpec, ...] = (),
) -> list[dict]:
    """The torchattacks suite and the plan's [[attacks]] (`extra`) transferred from the surrogate,
    then the adaptive attack on the model's whole guarded pipeline, each sent through the gateway to
    `model`."""
    from guard.tools.evaluation.adaptive import KAPPA, MARGIN, GuardedSurrogate, adaptive_pgd

    rows = []
    clean_ok_surrogate = atk.predict(net, x) == y
    suite = [
        s
        for s in [*atk.attack_suite(options.quick, options.epsilons), *extra]
        if options.attacks is None or s.name in options.attacks
    ]
    for spec in suite:
        start = time.perf_counter()
        adv = atk.run_attack(spec, net, x, y, seed=options.seed)
        served = client.infer(model.name, adv, desc=f"send {spec.key}")
        eligible, successful = m.success(clean_pred, served.predictions, y)
        rows.append(
            model.row(
                spec.name,
                spec.eps,
                "transfer",
                served,
                eligible,
                successful,
                _surrogate_asr(net, adv, y, clean_ok_surrogate),
                curves,
                suffix,
            )
        )
        rows[-1]["params"] = spec.params
        log.info(
            "%s: ASR %s, ensemble %s (%.1f s)",
            rows[-1]["key"],
            rows[-1]["asr"],
            rows[-1]["scorers"]["ensemble"],
            time.perf_counter() - start,
        )

    guarded = GuardedSurrogate(net.with_features(), directory)
    steps = options.adaptive_steps or (10 if options.quick else 50)
    for eps in options.epsilons:
        alpha = 2.5 * eps / steps  # the PGD paper's rule: the walk can cross the ball 2.5 times
        adv = adaptive_pgd(guarded, x, y, eps, steps=steps, alpha=alpha, seed=options.seed)
        served = client.infer(model.name, adv, desc=f"send adaptive eps {eps:g}")
        eligible, successful = m.success(clean_pred, served.predictions, y)
        rows.append(
            model.row(
                "adaptive_pgd",
                eps,
                "adaptive",
                served,
                eligible,
                successful,
                _surrogate_asr(net, adv, y, clean_ok_surrogate),
                curves,
                suffix,
            )
        )
        rows[-1]["params"] = {"steps": steps, "alpha": alpha, "random_start": True, "kappa": KAPPA, "margin": MARGIN}
        log.info("%s: ASR %s, ensemble %s", rows[-1]["key"], rows[-1]["asr"], rows[-1]["scorers"]["ensemble"])
    return rows


def run_evaluation(options: EvalOptions) -> dict:
    """Build (or, with --connect, reuse) the repository, evaluate through the gateway, write reports."""
    from guard.tools.evaluation.tables import write_report

    started = time.perf_counter()
    plan = load_plan(options.plan)  # checked before anything slow starts
    with contextlib.ExitStack() as stack:
        for name in ("guard.access", "guard.serving.dataplane"):  # a line per request / per flagged request
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.WARNING)
        workdir = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="guard-eval-")))
        repository = workdir / "repository"
        if options.connect and is_built(plan, repository):
            log.info("--connect: reusing %s for the adaptive attack's detector statistics", repository)
        else:
            build_repository(plan, repository, seed=options.seed, ensemble=options.ensemble)
        url, baselines_of = stack.enter_context(_gateway(options, repository))
        credentials = options.credentials if options.connect else NONE
        client = stack.enter_context(GatewayClient(url, credentials=credentials))
        for name in plan.names:  # each model's own deadline bounds how much the client queues
            timeout_us = load_model_config(repository / name).batching.default_timeout_microseconds
            client.deadlines[name] = timeout_us / 1e6
        found, curves = evaluate(client, repository, plan, options, baselines_of)
    notes = [note.format(surrogate=plan.attack_surrogate().name) for note in NOTES if plan.attacked]
    notes += (IMAGE_NOTES if plan.images else []) + (TEXT_NOTES if plan.texts else []) + list(plan.notes)
    results = {
        "meta": {
            "command": options.command or f"guard evaluate --plan {plan.path}",
            "seed": options.seed,
            "plan": str(plan.path),
            "samples": found.pop("samples"),
            "quick": options.quick,
            "gateway": url,
            "connected": bool(options.connect),
            "target_fpr": 0.05,
            "fprs": list(m.FPRS),
            "wall_seconds": time.perf_counter() - started,
            "notes": notes,
        },
        **found,
    }
    written = write_report(options.report_dir, results, curves)
    log.info(
        "wrote %s (%.0f s)",
        ", ".join(str(p) for p in written.values() if p.suffix != ".png"),
        results["meta"]["wall_seconds"],
    )
    return results


def main(args) -> int:
    """The `guard evaluate` entry point (args from guard.tools.commands.evaluate)."""
    flags = [
        f"--plan {shlex.quote(str(args.plan))}",
        f"--samples {args.samples}" if args.samples else "",
        "--quick" if args.quick else "",
        f"--report-dir {shlex.quote(str(args.report_dir))}",
        f"--seed {args.seed}",
        f"--connect {args.connect}" if args.connect else "",
        f"--ensemble {args.ensemble}" if args.ensemble != "omnibus" else "",
    ]
    options = EvalOptions(
        plan=args.plan,
        samples=args.samples,
        quick=args.quick,
        report_dir=args.report_dir,
        workdir=args.workdir,
        connect=args.connect,
        credentials=ClientCredentials.from_args(args),
        seed=args.seed,
        ensemble=args.ensemble,
        command=" ".join(["guard evaluate", *filter(None, flags)]),
    )
    run_evaluation(options)
    return 0
