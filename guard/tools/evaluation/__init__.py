"""`guard evaluate`: attack the guarded models and measure detection through a live gateway.

    repository.py  the evaluation repository (every model, every detector, policy flag)
    attacks.py     torchattacks suite on the FP32 surrogate, backdoor triggers
    adaptive.py    white-box PGD against the whole guarded pipeline
    client.py      one request per image over gRPC, with guard_explain: true
    metrics.py     ASR, detection at a clean FPR, AUROC, union ensembles
    report.py      results.json, results.md, roc_<row>.png
    run.py         orchestration and the CLI entry point

Method and honesty rules: docs/evaluation.md.
"""
