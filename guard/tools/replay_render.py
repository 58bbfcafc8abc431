"""Pictures of a replay: the first camera's frames with what the model found (boxes with class
names, or the top class) and a border in the verdict's colour, as a contact sheet (PNG) and as an
annotated video (MP4, PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from guard.detection.boxes import BoxSettings, decode
from guard.detection.preprocess.resizing import boxes_to_frame
from guard.tools.clean_data import video_frames

COLOURS = {
    "clean": (40, 170, 70),
    "adversarial": (220, 40, 40),
    "trigger": (230, 140, 20),
    "unchecked": (120, 120, 120),
    "error": (0, 0, 0),
}
BORDER = 6


def _annotate(frame: np.ndarray, answer, boxes: str | None, labels: list[str] | None) -> Image.Image:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    colour = COLOURS.get(answer.verdict, (0, 0, 0))
    if boxes == "yolo" and answer.outputs:
        raw = next(iter(answer.outputs.values()))
        (found,) = decode(torch.from_numpy(np.array(raw, np.float32)), BoxSettings())  # a writable copy for torch
        # Detections are in the model's letterboxed square input; map them back onto the frame.
        side = 416
        placed = boxes_to_frame(found.xyxy.numpy(), frame.shape[0], frame.shape[1], side, side)
        for box, score, cls in zip(placed.tolist(), found.scores.tolist(), found.classes.tolist()):
            draw.rectangle(box, outline=(255, 220, 0), width=2)
            name = labels[cls] if labels and cls < len(labels) else str(cls)
            draw.text((box[0] + 2, box[1] + 2), f"{name} {score:.2f}", fill=(255, 220, 0))
    elif answer.outputs:
        logits = next(iter(answer.outputs.values())).reshape(-1)
        top_class = int(np.argmax(logits))
        name = labels[top_class] if labels and top_class < len(labels) else str(top_class)
        draw.text((BORDER + 4, frame.shape[0] - 16), name, fill=(255, 255, 255))
    draw.rectangle([0, 0, frame.shape[1] - 1, frame.shape[0] - 1], outline=colour, width=BORDER)
    draw.text(
        (BORDER + 4, BORDER + 2),
        f"{answer.verdict} {answer.score:.2f} {answer.latency_ms:.0f} ms",
        fill=(255, 255, 255),
    )
    return image


def render(
    video: Path,
    answers: list,
    frames: int,
    out: Path,
    boxes: str | None = None,
    labels: list[str] | None = None,
    sheet: int = 24,
) -> list[Path]:
    own = {a.frame: a for a in answers if a.camera == 0}
    images = [
        _annotate(frame, own[i], boxes, labels) for i, frame in enumerate(video_frames(video, limit=frames)) if i in own
    ]
    if not images:
        return []
    written = [out / "contact_sheet.png"]
    picks = [images[i] for i in np.linspace(0, len(images) - 1, min(sheet, len(images))).round().astype(int)]
    columns = 6
    width, height = picks[0].size
    thumb = (width // 2, height // 2)
    rows = -(-len(picks) // columns)
    canvas = Image.new("RGB", (thumb[0] * columns, thumb[1] * rows), (255, 255, 255))
    for k, image in enumerate(picks):
        canvas.paste(image.resize(thumb), ((k % columns) * thumb[0], (k // columns) * thumb[1]))
    canvas.save(written[0])
    try:
        import av
    except ImportError:
        return written
    written.append(out / "annotated.mp4")
    with av.open(str(written[1]), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.asarray(image)[: stream.height, : stream.width], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return written
