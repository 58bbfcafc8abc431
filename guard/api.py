"""guard's public API: what code outside the library (the examples, a user's recipes) may import.

Everything else under `guard.` is internal and moves without notice; these names keep their
meaning between releases. The examples package (examples/guard_examples) imports guard only
through this module, and an import-linter contract in pyproject.toml holds it to that.

Names too generic to read well out of their module are exported under a longer one (the
original in the comment). Four modules are exported whole, as namespaces whose public functions
are part of the API: `squeezers` (the squeezing transforms), `resizing` (frame geometry),
`rates` (detection and false-positive rates) and `attacks` (the attack suite on a surrogate).
"""

from __future__ import annotations

from guard.backends import build_backend
from guard.backends.onnx_graph import expose_features
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.detection import squeezers
from guard.detection.bounds import allowed_exceedances, upper_bound
from guard.detection.boxes import BoxSettings
from guard.detection.boxes import decode as decode_boxes
from guard.detection.calibration.derive import score as score_detectors
from guard.detection.calibration.references import References
from guard.detection.detectors import IMAGE, Detector, Outputs, build_detectors, squeezer_tables
from guard.detection.detectors.network import KEYS as NETWORK_KEYS
from guard.detection.ensemble import Fisher, Union
from guard.detection.neighbours import build_neighbours, load_neighbours, read_encoder, save_neighbours
from guard.detection.pipeline import GuardPipeline
from guard.detection.preprocess import resizing
from guard.detection.preprocess.images import ImagesPreprocessor
from guard.detection.preprocess.resizing import boxes_to_frame, center_crop, center_crop_geometry, resize
from guard.detection.preprocess.resizing import fit as fit_frame
from guard.detection.preprocess.text import TextPreprocessor
from guard.detection.texts import TextRows
from guard.detection.thresholds import threshold_for
from guard.detection.verdicts import union_of
from guard.protocol.errors import ConfigError
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec
from guard.serving.background import BackgroundServer
from guard.serving.composition import build_pipeline
from guard.serving.model_config import ModelConfig, load_model_config
from guard.serving.quarantine.settings import QuarantineSettings
from guard.serving.runtime import load_combiner
from guard.serving.settings import ServerSettings
from guard.tools.calibrate import calibrate_model, detector_tables
from guard.tools.calibrate_dir import calibrate_directory
from guard.tools.clean_data import decode_image, decode_video, encode_jpeg, utf8_rows
from guard.tools.evaluation import attacks, rates
from guard.tools.evaluation.baseline_clock import simulated_hours
from guard.tools.evaluation.client import GatewayClient
from guard.tools.evaluation.conditions import CONDITIONS
from guard.tools.evaluation.conditions import under as apply_condition
from guard.tools.evaluation.pgd import linf_pgd, untargeted_pgd
from guard.tools.evaluation.plan import load_plan
from guard.tools.evaluation.run import EvalOptions, run_evaluation
from guard.tools.evaluation.tables import roc_png
from guard.tools.evaluation.tensor_data import read_samples
from guard.tools.evaluation.text_attacks import REGISTRY as TEXT_ATTACKS
from guard.tools.evaluation.text_attacks import TextAttackResult, build_attack, label_only
from guard.tools.evaluation.text_gateway import GatewayOracle
from guard.tools.evaluation.text_models import TextTrigger
from guard.tools.evaluation.triggers import load_trigger, trigger_from_arrays

__all__ = [
    # Serving: a gateway in this process, its settings, a model directory's configuration.
    "BackgroundServer",
    "ServerSettings",
    "QuarantineSettings",
    "ModelConfig",
    "load_model_config",
    "load_combiner",
    "ConfigError",
    "TensorSpec",
    # Backends and ONNX graphs.
    "OnnxRuntimeBackend",
    "build_backend",
    "expose_features",
    # Detection: detectors, the pipeline that runs them, thresholds and ensembles.
    "Detector",
    "Outputs",
    "Param",
    "IMAGE",
    "build_detectors",
    "squeezer_tables",
    "NETWORK_KEYS",
    "GuardPipeline",
    "build_pipeline",
    "ImagesPreprocessor",
    "References",
    "score_detectors",
    "Fisher",
    "Union",
    "union_of",
    "threshold_for",
    "upper_bound",
    "allowed_exceedances",
    "squeezers",
    # Frames and boxes: one copy of the geometry the gateway applies.
    "resizing",
    "resize",
    "fit_frame",
    "center_crop",
    "center_crop_geometry",
    "boxes_to_frame",
    "BoxSettings",
    "decode_boxes",
    # Text: the rows text detectors examine, the tokenizing preprocessor, word neighbours.
    "TextRows",
    "TextPreprocessor",
    "build_neighbours",
    "save_neighbours",
    "load_neighbours",
    "read_encoder",
    "utf8_rows",
    # Calibration, clean data, evaluation.
    "calibrate_model",
    "calibrate_directory",
    "detector_tables",
    "decode_image",
    "decode_video",
    "encode_jpeg",
    "GatewayClient",
    "CONDITIONS",
    "apply_condition",
    "simulated_hours",
    "linf_pgd",
    "untargeted_pgd",
    "load_plan",
    "read_samples",
    "EvalOptions",
    "run_evaluation",
    "rates",
    "attacks",
    "roc_png",
    "trigger_from_arrays",
    "load_trigger",
    "TEXT_ATTACKS",
    "build_attack",
    "label_only",
    "GatewayOracle",
    "TextAttackResult",
    "TextTrigger",
]
