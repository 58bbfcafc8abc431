"""`guard evaluate --plan PLAN.toml`: attack the guarded models and measure detection through a live gateway.

    plan.py        the evaluation plan: data splits, surrogate, models under test, triggers (TOML)
    triggers.py    the trigger file format (mask + pattern) and its application
    subjects.py    the evaluation repository (every model, every detector, policy flag)
    attacks.py     torchattacks suite on the plan's surrogate
    pgd.py         the one L-inf PGD walk (adaptive attack, guard audit)
    adaptive.py    white-box PGD against the whole guarded pipeline
    client.py      one request per image over gRPC, with guard_explain: true
    rates.py       ASR, detection at a clean FPR, AUROC, scorers
    tables.py      results.json, results.md, roc_<row>.png
    run.py         orchestration and the CLI entry point

Method and honesty rules: docs/evaluation.md.
"""
