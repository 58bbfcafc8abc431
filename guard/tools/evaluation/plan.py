"""The evaluation plan: everything `guard evaluate` needs, named in one TOML file.

guard is installed as a wheel, so the evaluation cannot reach into a checkout for its data,
surrogate or models: a plan names them as files, with paths relative to the plan file.

    notes = ["..."]                      # optional: sentences appended to the report

    [data]                               # .npz files with x (float32 in [0, 1]) and y (int labels)
    fit = "data/fit.npz"                 # detectors learn clean statistics here
    calibration = "data/calibration.npz" # thresholds are set here
    test = "data/test.npz"               # clean test rows and the rows that get attacked

    [surrogate]
    onnx = "surrogate.onnx"              # the white-box attacks differentiate through this, as torch
                                         # (needed when some model is attacked)

    [[models]]                           # a model without a trigger is attacked (suite + adaptive)
    name = "digits"
    onnx = "models/digits/model.onnx"
    detector_network = "models/digits/detector_net.npz"   # optional: joins the ensemble
    artifacts = ["models/digits/extra.bin"]               # optional: copied next to model.onnx

    [[models]]                           # a backdoored model: its trigger is applied to the test rows
    name = "backdoor_patch"
    onnx = "models/backdoor_patch/model.onnx"
    trigger = "triggers/backdoor_patch.npz"   # guard.tools.evaluation.triggers' mask + pattern file
    target = 0

    [[attacks]]                          # optional: attacks run after the suite, on every attacked model
    name = "pgd"                         # a built-in or a plugin's (entry-point group guard.attacks)
    eps = 0.05                           # optional: the L-inf budget (none: the attack's own measure)
    params = { steps = 100, alpha = 0.002 }   # optional: the factory's keyword arguments
    batch_size = 128                     # optional

An image plan names frames instead (frame_data.py: folders of images, videos) and model
directories whose input is BYTES images (image_models.py); its attacks carry a success `rule`
(image_attacks.py, rules.py):

    [data]
    fit = ["frames/fit", "street.mp4"]
    calibration = "frames/calibration"
    test = "frames/test"

    [[models]]
    name = "detector"
    model = "models/detector"            # a model directory: config.toml + model.onnx

    [[attacks]]
    name = "pgd"
    rule = "hide"                        # hide | appear | move (detection), flip (classification)
    class = 0
    eps = [0.0157, 0.0314]

A text plan names .npz files of texts (text_data.py: x of str, y), model directories whose input
is BYTES text (text_models.py, with a backdoored one's `trigger_text` and `target`) and black-box
attacks that query the live gateway (text_plan.py: `name = "swap"`, `params`, `neighbours`).

Every problem is a ConfigError naming the plan (or the data file) and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from guard.protocol.errors import ConfigError
from guard.protocol.settings import TableReader
from guard.tools.evaluation.attacks import AVAILABLE as ATTACKS
from guard.tools.evaluation.attacks import AttackSpec, attack_suite
from guard.tools.evaluation.frame_data import FrameSplit, names_frames, read_frame_data
from guard.tools.evaluation.image_attacks import RuleAttack
from guard.tools.evaluation.image_models import ImageModel, read_image_model
from guard.tools.evaluation.image_plan import check_rule_attacks, read_rule_attacks
from guard.tools.evaluation.tensor_data import Split, load_split
from guard.tools.evaluation.text_data import TextSplit, names_texts, read_out_of_domain, read_text_splits
from guard.tools.evaluation.text_models import KEYS as TEXT_KEYS
from guard.tools.evaluation.text_models import TextModel, is_text_model, read_text_model
from guard.tools.evaluation.text_plan import TextAttackSpec, read_text_attacks
from guard.tools.evaluation.triggers import MaskTrigger, load_trigger

SPLITS = ("fit", "calibration", "test")
NETWORK_WEIGHTS = "detector_net.npz"
"""The detector network's weights' file name inside the model directory."""
RESERVED = ("model.onnx", "config.toml", "calibration.json")
"""Files calibration writes into a model directory; an artifact must not overwrite them."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a directory of the evaluation repository


@dataclass(frozen=True)
class Subject:
    """One model under test."""

    name: str
    onnx: Path
    artifacts: tuple[Path, ...] = ()
    detector_network: Path | None = None
    trigger: MaskTrigger | None = None
    trigger_path: Path | None = None
    target: int | None = None
    image: ImageModel | None = None
    """A model directory whose input is BYTES images (`model = DIR`); None for an ONNX tensor model."""
    text: TextModel | None = None
    """A model directory whose input is BYTES text (`model = DIR`)."""

    @property
    def backdoored(self) -> bool:
        return self.trigger is not None

    def backdoor(self) -> tuple[MaskTrigger, int]:
        """(trigger, target class) of a backdoored model; load_plan reads both or neither."""
        if self.trigger is None or self.target is None:
            raise ValueError(f"model {self.name} has no trigger and target")
        return self.trigger, self.target


@dataclass(frozen=True)
class Plan:
    path: Path
    fit: Split | FrameSplit | TextSplit
    calibration: Split | FrameSplit | TextSplit
    test: Split | FrameSplit | TextSplit
    """.npz arrays for tensor models, frames for image models, texts for text models (every model of a
    plan is of one kind)."""
    surrogate: Path | None
    """None only when no tensor model is attacked (every model has a trigger, or is an image model)."""
    models: tuple[Subject, ...]
    notes: tuple[str, ...] = ()
    attacks: tuple[AttackSpec, ...] = ()
    """[[attacks]] without a rule: run after the suite on the tensor models, each with its own key."""
    image_attacks: tuple[RuleAttack, ...] = ()
    """[[attacks]] with a rule: run on the image models of the rule's output kind."""
    text_attacks: tuple[TextAttackSpec, ...] = ()
    """A text plan's [[attacks]]: black-box, through the gateway, on every text model without a trigger."""
    out_of_domain: dict[str, TextSplit] | None = None
    """A text plan's clean sets from elsewhere, measured only."""

    def split(self, key: str) -> Split:
        """A tensor plan's split (fit, calibration, test) as arrays."""
        split = getattr(self, key)
        if not isinstance(split, Split):
            raise ValueError(f"plan {self.path} names frames, not .npz arrays, for [data] {key}")
        return split

    def frames(self, key: str) -> FrameSplit:
        """An image plan's split (fit, calibration, test) as frames."""
        split = getattr(self, key)
        if not isinstance(split, FrameSplit):
            raise ValueError(f"plan {self.path} names .npz arrays, not frames, for [data] {key}")
        return split

    def text_split(self, key: str) -> TextSplit:
        """A text plan's split (fit, calibration, test) as texts."""
        split = getattr(self, key)
        if not isinstance(split, TextSplit):
            raise ValueError(f"plan {self.path} names no texts for [data] {key}")
        return split

    @property
    def texts(self) -> list[Subject]:
        """Text models (model directories): attacked black-box through the gateway."""
        return [s for s in self.models if s.text is not None]

    def attack_surrogate(self) -> Path:
        """`surrogate`, which load_plan requires whenever some model is attacked."""
        if self.surrogate is None:
            raise ValueError(f"plan {self.path} names no [surrogate] onnx to attack through")
        return self.surrogate

    @property
    def attacked(self) -> list[Subject]:
        """Tensor models without a trigger: attacked through the surrogate."""
        return [s for s in self.models if not s.backdoored and s.image is None and s.text is None]

    @property
    def images(self) -> list[Subject]:
        """Image models (model directories): attacked white-box, judged by their rules."""
        return [s for s in self.models if s.image is not None]

    def image_attacks_for(self, subject: Subject) -> list[RuleAttack]:
        """The plan's attacks whose rule judges this image model's output kind."""
        assert subject.image is not None
        return [a for a in self.image_attacks if a.output_kind == subject.image.output_kind]

    @property
    def backdoored(self) -> list[Subject]:
        return [s for s in self.models if s.backdoored]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.models]


def _image_subject(reader: TableReader, name: str) -> Subject:
    """`model = DIR`: a model directory, with none of a tensor model's keys."""
    for key in ("onnx", "artifacts", "detector_network", "trigger", "target"):
        if key in reader.table:
            raise reader.fail(key, "no such key beside `model` (a model directory carries its own files)")
    image = read_image_model(reader, "model")
    return Subject(name, image.model_file, image=image)


def _subject(reader: TableReader) -> Subject:
    reader.unknown(("name", "onnx", "artifacts", "detector_network", "trigger", *TEXT_KEYS))
    name = reader.get("name", str, expected="a model name")
    if not NAME.match(name):
        raise reader.fail("name", "a name of letters, digits, '_', '.', '-'", name)
    if "model" in reader.table and is_text_model(reader, "model"):
        text = read_text_model(reader)
        return Subject(name, text.model_file, target=text.target, text=text)
    for key in ("trigger_text", "trigger_at", "attack_labels"):
        if key in reader.table:
            raise reader.fail(key, "no such key for a model that does not take text")
    if "model" in reader.table:
        return _image_subject(reader, name)
    onnx = reader.file("onnx", what="an ONNX file (or `model`: a model directory)", anywhere=True)
    artifacts = reader.get("artifacts", list, [], "a list of files")
    paths = []
    for i, value in enumerate(artifacts):
        if not isinstance(value, str) or not (reader.directory / value).is_file():
            raise reader.fail(f"artifacts[{i}]", f"an existing file in {reader.directory}", value)
        paths.append(reader.directory / value)
    network = None
    if "detector_network" in reader.table:
        network = reader.file("detector_network", what="the detector network's weights (.npz)", anywhere=True)
    names = [p.name for p in paths] + ([NETWORK_WEIGHTS] if network is not None else [])
    clash = next((n for n in names if names.count(n) > 1 or n in RESERVED), None)
    if clash is not None:  # every artifact lands in the model directory under its own file name
        raise reader.fail(
            "artifacts",
            f"files with distinct names, none of {', '.join(RESERVED)}"
            + (f" or {NETWORK_WEIGHTS} (the detector network's)" if network is not None else ""),
            clash,
        )
    if ("trigger" in reader.table) != ("target" in reader.table):
        missing = "target" if "trigger" in reader.table else "trigger"
        raise reader.fail(missing, "both `trigger` and `target` for a backdoored model (missing)")
    trigger = trigger_path = target = None
    if "trigger" in reader.table:
        trigger_path = reader.file("trigger", what="a trigger file (.npz with mask and pattern)", anywhere=True)
        trigger = load_trigger(trigger_path)
        target = reader.get("target", int, expected="the backdoor's target class")
        if target < 0:
            raise reader.fail("target", "a class index >= 0", target)
    return Subject(name, onnx, tuple(paths), network, trigger, trigger_path, target)


def _attacks(reader: TableReader) -> tuple[tuple[AttackSpec, ...], list[tuple[int, RuleAttack]]]:
    """The tensor models' extra attacks, and the image models' attacks with their entry's index."""
    suite = {spec.key for spec in attack_suite()}
    specs: list[AttackSpec] = []
    ruled: list[tuple[int, RuleAttack]] = []
    for i, r in enumerate(reader.tables("attacks")):
        if "rule" in r.table:
            for attack in read_rule_attacks(r):
                if attack.key in {a.key for _, a in ruled}:
                    raise r.fail(
                        "eps", f"an attack whose key ({attack.key}) no other attack of the run has", attack.eps
                    )
                ruled.append((i, attack))
            continue
        r.unknown(("name", "eps", "params", "batch_size"))
        name = r.get("name", str, expected="an attack name")
        ATTACKS.resolve(r, "name", name)
        eps = r.positive_float("eps", ..., "a positive L-inf budget") if "eps" in r.table else None
        params = r.get("params", dict, {}, "a table of the attack's keyword arguments")
        spec = AttackSpec(name, eps, params, r.positive("batch_size", 128))
        if spec.key in suite or spec.key in {s.key for s in specs}:
            raise r.fail("name", f"an attack whose key ({spec.key}) no other attack of the run has", name)
        specs.append(spec)
    return tuple(specs), ruled


def _data(reader: TableReader) -> dict[str, Split | FrameSplit | TextSplit]:
    """[data]: three .npz files (tensor models), frames (image models) for every split, or three
    .npz files of texts (text models)."""
    data = reader.sub("data")
    test = data.table.get("test")
    if isinstance(test, str) and test.endswith(".npz") and names_texts(data.directory / test):
        return dict(read_text_splits(data))
    framed = [key for key in SPLITS if key in data.table and names_frames(data.table[key])]
    if framed:
        arrays = next((key for key in SPLITS if key in data.table and key not in framed), None)
        if arrays is not None:
            raise data.fail(arrays, "frames like the other splits (folders of images or videos), not an .npz")
        return dict(read_frame_data(data, SPLITS))
    data.unknown(SPLITS)
    splits = {key: load_split(data, key) for key in SPLITS}
    shapes = {key: s.x.shape[1:] for key, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise data.fail(
            "test",
            f"splits of one sample shape (fit {list(shapes['fit'])}, calibration {list(shapes['calibration'])})",
            list(shapes["test"]),
        )
    return dict(splits)


def load_plan(path: Path) -> Plan:
    """Read and check a plan; data files are loaded (and checked) too."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing evaluation plan (TOML)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, "(file)", f"a readable TOML file ({exc})") from None
    reader = TableReader(path.resolve(), table)
    reader.unknown(("notes", "data", "surrogate", "models", "attacks"))
    notes = reader.get("notes", list, [], "a list of strings")
    if not all(isinstance(n, str) for n in notes):
        raise reader.fail("notes", "a list of strings", notes)
    splits = _data(reader)
    models = tuple(_subject(r) for r in reader.tables("models"))
    if not models:
        raise reader.fail("models", "at least one [[models]] table")
    names = [m.name for m in models]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise reader.fail("models", "distinct model names", duplicate)
    if isinstance(splits["test"], TextSplit):
        return _text_plan(reader, path, splits, models, tuple(notes))
    odd = next((i for i, m in enumerate(models) if m.text is not None), None)
    if odd is not None:
        raise reader.fail(f"models[{odd}].model", "a model that does not take text, as the plan's [data] are not texts")
    framed = isinstance(splits["test"], FrameSplit)
    odd = next((i for i, m in enumerate(models) if (m.image is not None) != framed), None)
    if odd is not None:
        raise reader.fail(
            f"models[{odd}].{'onnx' if framed else 'model'}",
            "a model directory (`model`) whose input is images, as the plan's [data] are frames"
            if framed
            else "an ONNX tensor model (`onnx`), as the plan's [data] are .npz arrays",
        )
    test = splits["test"]
    unlabelled = next(
        (
            i
            for i, m in enumerate(models)
            if m.image is not None and m.image.warmup and not (isinstance(test, FrameSplit) and test.per_camera)
        ),
        None,
    )
    if unlabelled is not None:
        raise reader.fail(
            f"models[{unlabelled}].model",
            "a model without [cameras.baseline], or [data] cameras = true (each source a camera, whose "
            "frames carry its camera_id)",
        )
    attacks, ruled = _attacks(reader)
    check_rule_attacks(reader, ruled, [m.image for m in models if m.image is not None])
    surrogate = reader.sub("surrogate")
    surrogate.unknown(("onnx",))
    attacked = any(not m.backdoored and m.image is None for m in models)
    surrogate_path = (
        surrogate.file("onnx", what="the surrogate ONNX file the attacks differentiate through", anywhere=True)
        if attacked or "onnx" in surrogate.table
        else None
    )
    return Plan(
        path.resolve(),
        splits["fit"],
        splits["calibration"],
        splits["test"],
        surrogate_path,
        models,
        tuple(notes),
        attacks,
        tuple(a for _, a in ruled),
    )


def _text_plan(
    reader: TableReader,
    path: Path,
    splits: dict[str, Split | FrameSplit | TextSplit],
    models: tuple[Subject, ...],
    notes: tuple[str, ...],
) -> Plan:
    """A plan whose [data] are texts: every model a text model, the attacks black-box ones."""
    odd = next((i for i, m in enumerate(models) if m.text is None), None)
    if odd is not None:
        raise reader.fail(
            f"models[{odd}]", 'a text model directory (`model`, [preprocess] kind = "text"), as the [data] are texts'
        )
    if "surrogate" in reader.table:
        raise reader.fail("surrogate", "no surrogate: text models are attacked black-box through the gateway")
    out_of_domain = read_out_of_domain(reader.sub("data"))
    return Plan(
        path.resolve(),
        splits["fit"],
        splits["calibration"],
        splits["test"],
        None,
        models,
        notes,
        text_attacks=read_text_attacks(reader),
        out_of_domain=out_of_domain,
    )
