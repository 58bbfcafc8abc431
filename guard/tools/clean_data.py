"""Clean samples for calibration, in whatever form a user has them: an .npz of arrays, a folder of
images, a video file, or a text file (one text per line). They become References shaped as the
model's clients send them: encoded images or UTF-8 text for a BYTES input, UINT8 H x W x C frames
for a frames input, arrays as they are for the rest. An .npz holds text as an array of str (numpy's
fixed-width unicode, which loads without pickle). Video is decoded with PyAV (FFmpeg); every
`stride`-th frame is kept, up to `limit`.

The image and video helpers here are the one copy for everything that sends or reads frames as a
camera would (replay, the evaluation's conditions, the benchmarks, the examples through guard.api)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from guard.detection.calibration.references import References
from guard.protocol.errors import ConfigError
from guard.protocol.spec import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
TEXT_SUFFIXES = (".txt",)


def utf8_rows(texts: np.ndarray | list[str], spec: TensorSpec) -> np.ndarray:
    """Texts as a text model's clients send them: an object array of UTF-8 bytes, [n] or [n, 1]
    as the input's shape says."""
    items = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in np.asarray(texts).reshape(-1)]
    rows = np.array(items + [None], dtype=object)[:-1]
    return rows.reshape(len(items), *([1] if spec.shape == (1,) else []))


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 [H, W, 3] -> baseline JPEG bytes (Pillow's libjpeg, 4:2:0 chroma like most cameras)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality} is outside 1..100")
    out = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(out, format="JPEG", quality=quality, subsampling="4:2:0")
    return out.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> PNG bytes: lossless, so every pixel arrives as it was (an adversarial
    perturbation of a few levels survives; JPEG's quantisation would smear it)."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def decode_image(data: bytes | Path) -> np.ndarray:
    """An encoded image (bytes or a file) as RGB uint8 [H, W, 3]."""
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with Image.open(source) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy: torch.from_numpy warns otherwise


def decode_video(path: Path, *, start: int = 0, step: int = 1, limit: int | None = None) -> Iterator[np.ndarray]:
    """Frames start, start + step, ... of a video file as RGB uint8 [H, W, 3], at most `limit`
    (PyAV; decoding stops at the last one wanted)."""
    import av

    if limit is not None and limit <= 0:
        return
    taken = 0
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start and (index - start) % step == 0:
                yield frame.to_ndarray(format="rgb24")
                taken += 1
                if limit is not None and taken >= limit:
                    return


def video_frames(path: Path, stride: int = 1, limit: int | None = None) -> list[np.ndarray]:
    """RGB uint8 frames of a video, every `stride`-th, at most `limit`."""
    try:
        frames = list(decode_video(path, step=stride, limit=limit))
    except ImportError:
        raise ConfigError(path, "--data", "a video PyAV can read (pip install 'guard[camera]')", path.name) from None
    if not frames:
        raise ConfigError(path, "--data", "a video with at least one decodable frame", path.name)
    return frames


def _as_client_rows(
    frames: list[np.ndarray], encoded: list[bytes] | None, spec: TensorSpec, source: Path
) -> np.ndarray:
    if spec.datatype == "BYTES":
        items = encoded if encoded is not None else [encode_jpeg(f) for f in frames]
        rows = np.array(items + [None], dtype=object)[:-1]
        return rows.reshape(len(items), *([1] if spec.shape == (1,) else []))
    if spec.datatype == "UINT8" and len(spec.shape) == 3:
        if len({f.shape for f in frames}) != 1:
            raise ConfigError(
                source,
                "--data",
                "frames of one size (they are stacked into one array)",
                sorted({f.shape for f in frames})[:3],
            )
        return np.stack(frames)
    raise ConfigError(
        source,
        "--data",
        f"an .npz for input '{spec.name}' ({spec.datatype}); images and video "
        "feed BYTES (encoded images) or UINT8 [H, W, C] frame inputs",
        source.name,
    )


def load_references(
    path: Path, inputs: tuple[TensorSpec, ...], stride: int = 1, limit: int | None = None
) -> References:
    """Clean samples for a model whose clients send `inputs`."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {spec.name: data[spec.name] for spec in inputs if spec.name in data.files}
            if not arrays and "x" in data.files and len(inputs) == 1:
                arrays = {inputs[0].name: data["x"]}
            if set(arrays) != {spec.name for spec in inputs}:
                raise ConfigError(
                    path,
                    "--data",
                    f"arrays named {[s.name for s in inputs]} (or 'x' for a single input), and optionally 'y'",
                    data.files,
                )
            for spec in inputs:
                if spec.datatype == "BYTES" and arrays[spec.name].dtype.kind == "U":
                    arrays[spec.name] = utf8_rows(arrays[spec.name], spec)
            return References(arrays, data["y"] if "y" in data.files else None)
    if len(inputs) != 1:
        raise ConfigError(path, "--data", "an .npz with one array per input for a model with several inputs", path.name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not files:
            raise ConfigError(path, "--data", f"a folder of {', '.join(IMAGE_SUFFIXES)} images", path.name)
        encoded = [f.read_bytes() for f in files]
        frames = [decode_image(b) for b in encoded]
        return References({inputs[0].name: _as_client_rows(frames, encoded, inputs[0], path)})
    if path.suffix.lower() in TEXT_SUFFIXES and inputs[0].datatype == "BYTES":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
        if not lines:
            raise ConfigError(path, "--data", "a text file with one text per line", path.name)
        return References({inputs[0].name: utf8_rows(lines, inputs[0])})
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = video_frames(path, stride, limit)
        return References({inputs[0].name: _as_client_rows(frames, None, inputs[0], path)})
    raise ConfigError(
        path, "--data", "an .npz, a folder of images, a video file, or a .txt of texts (one per line)", path.name
    )


def load_cameras(
    paths: list[Path], inputs: tuple[TensorSpec, ...], stride: int = 1, limit: int | None = None
) -> References:
    """Clean samples from several sources, each one camera (a video, an image folder, or an .npz
    with an optional `cameras` array): rows keep their order, and `cameras` says whose each is."""
    parts = [load_references(Path(p), inputs, stride, limit) for p in paths]
    names: list[np.ndarray] = []
    for path, part in zip(paths, parts):
        own = _npz_cameras(Path(path))
        names.append(own if own is not None else np.full(part.rows, Path(path).stem or str(path)))
    if len(paths) > 1 and len({n for array in names for n in set(array.tolist())}) < len(paths):
        names = [np.char.add(f"{i}:", array.astype(str)) for i, array in enumerate(names)]  # same stem twice
    inputs_ = {name: np.concatenate([part.inputs[name] for part in parts]) for name in parts[0].inputs}
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    return References(inputs_, labels, np.concatenate(names).astype(str))


def _npz_cameras(path: Path) -> np.ndarray | None:
    if path.suffix != ".npz":
        return None
    with np.load(path, allow_pickle=False) as data:
        return data["cameras"].astype(str) if "cameras" in data.files else None
