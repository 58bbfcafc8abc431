"""`guard evaluate --plan PLAN.toml`: attack the guarded models and measure detection through a live gateway.

    plan.py        the evaluation plan: data splits, surrogate, models under test, triggers (TOML)
    triggers.py    the trigger file format (mask + pattern) and its application
    subjects.py    the evaluation repository (every model, every detector, policy flag)
    attacks.py     torchattacks suite on the plan's surrogate
    pgd.py         the one L-inf PGD walk (adaptive attack, guard audit)
    adaptive.py    white-box PGD against the whole guarded pipeline
    client.py      one request per image over gRPC, with guard_explain: true
    rates.py       ASR, detection at a clean FPR, AUROC, scorers
    reference.py   a served model's clean reference and the report row of an attack on it
    frame_data.py  image plans' [data]: folders of images and videos, decoded to frames
    image_models.py   image plans' model directories: views at the input size, PNG, the model as torch
    image_subjects.py the image models of the evaluation repository (copied, calibrated)
    rules.py       success rules for image models: hide, appear, move (detection), flip
    image_attacks.py  PGD on a rule's loss, on 8-bit frames
    image_plan.py  image plans' [[attacks]] entries (with a rule), read and checked
    image_rows.py  an image plan through the gateway
    sheets.py      example sheets of image rows: clean and attacked frames as the gateway answered them
    text_data.py      text plans' [data]: .npz files of texts and labels, out-of-domain sets
    text_models.py    text plans' model directories, and a backdoored one's trigger text
    text_subjects.py  the text models of the evaluation repository (copied, calibrated)
    text_attacks.py   black-box text attacks through the gateway (character edits, word substitution)
    text_plan.py      text plans' [[attacks]] entries, read and checked
    text_rows.py      a text plan through the gateway
    text_tables.py    the report's text sections: out-of-domain sets, attack costs, attacked texts
    tables.py      results.json, results.md, roc_<row>.png
    run.py         orchestration and the CLI entry point

Method and honesty rules: docs/evaluation.md.
"""
