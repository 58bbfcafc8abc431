"""Torch backend: the protected model runs on the guard's own torch device, so a batch stays there
from the detectors' variants through the model to the detector scores. ONNX Runtime takes and
returns numpy arrays, which costs a host round trip per batch on a GPU host; this backend takes and
returns torch tensors on its device and never copies a batch to the host.

The model file's extension decides how it runs:
- `.onnx`: guard.backends.onnx_torch interprets the graph with torch ops (the same interpreter the
  scans differentiate through; constant subgraphs such as weight DequantizeLinear are folded once
  at load). Any tensor of the graph can be requested by name, so `features_output` may name an
  internal activation that is not a graph output. INT8 QDQ graphs are faked in float32: each
  QuantizeLinear rounds and clamps to the integer grid, so results equal ONNX Runtime's integer
  kernels except where a value lies within float rounding of a grid midpoint; there one stored
  integer differs by one step (measured: docs/backends.md).
- `.pt2`: a program saved by `torch.export.save`, loaded with `torch.export.load` (no project code
  needed to load it). Its batch dimension must be dynamic (exported with torch.export.Dim). Its
  inputs are named by the exported forward's arguments; its outputs by the keys of the dict it
  returns, or, for a tensor or tuple, positionally by the config's [[outputs]] then `features_output`.

`compile` ("none" by default) wraps the model in torch.compile: "default" (Inductor kernels) or
"reduce-overhead" (plus CUDA graphs: one launch per batch instead of one per op, which is what pays
for small models on a GPU). A compiled model is first traced with torch.export, then compiled;
batches are padded to the next power of two so at most a handful of shapes are ever compiled, and
every power of two up to WARM_ROWS rows is compiled at load rather than on live batches.
Compilation needs a C compiler (Inductor's C++ on CPU, Triton's launcher on CUDA): when it fails,
at load or later, the backend logs why and runs eager, so a host without a toolchain still serves.
Compiling is off by default because on the CPU it costs seconds at load and rarely pays for small
models; on CUDA, reduce-overhead is the setting to try.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch.utils import _pytree as pytree

from guard.backends.base import Backend
from guard.backends.device import select_device
from guard.backends.onnx_graph import onnx_signature
from guard.backends.onnx_torch import OnnxClassifier, load_onnx_classifier
from guard.backends.torch_tensors import (
    FLOATS,
    TORCH_DTYPES,
    NamedOutputs,
    inferred_shape,
    on_device,
    ordered,
    spec_of,
    the_input,
)
from guard.protocol.errors import BackendError, ConfigError
from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec, TensorSpec

log = logging.getLogger("guard.backends")

DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("none", "default", "reduce-overhead")
SUFFIXES = (".onnx", ".pt2")
WARM_ROWS = 128
"""Compiled models are warmed up at load on every power-of-two batch up to this many rows."""


@dataclass(frozen=True)
class TorchSettings:
    model_file: Path
    """An ONNX file (run by the interpreter) or a torch.export program (.pt2), by extension."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    compile: str = "none"
    """none, default or reduce-overhead (torch.compile modes; falls back to eager when it fails)."""
    config: Path | None = None
    """The config.toml these came from, for errors raised at load."""
    prefix: str = ""
    """The table's key prefix in that file ("backend.")."""


class TorchBackend(Backend):
    kind = "torch"
    keys = ("model_file", "device", "compile")
    io = "torch"

    @classmethod
    def read_settings(cls, reader: TableReader, model_name: str) -> TorchSettings:
        reader.unknown({"kind", *cls.keys})
        model_file = reader.file("model_file", "model.onnx", "the model's ONNX file or torch.export program (.pt2)")
        if model_file.suffix not in SUFFIXES:
            raise reader.fail("model_file", "an ONNX file (.onnx) or a torch.export program (.pt2)", model_file.name)
        return TorchSettings(
            model_file=model_file,
            device=reader.choice("device", DEVICES, "auto"),
            compile=reader.choice("compile", COMPILE_MODES, "none"),
            config=reader.path,
            prefix=reader.key(""),
        )

    @staticmethod
    def model_files(settings: TorchSettings) -> tuple[Path, ...]:
        return (settings.model_file,)

    @classmethod
    def open(
        cls, model_file: Path, features_output: str | None = None, output_names: tuple[str, ...] = (), **settings
    ) -> TorchBackend:
        """A loaded backend outside any repository (tests, benchmarks); keyword arguments are
        TorchSettings fields. `output_names` name a .pt2 program's positional outputs."""
        model_file = Path(model_file)
        outputs = tuple(TensorSpec(name, "FP32", ()) for name in output_names)
        backend = cls(
            ModelSpec(model_file.stem, "1", model_file.parent, (), outputs, features_output),
            TorchSettings(model_file, **settings),
        )
        backend.load()
        return backend

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        try:
            self._device = select_device(s.device)
        except ConfigError as exc:
            raise ConfigError(
                s.config or s.model_file, f"{s.prefix}device", "a host with CUDA (none is available)", s.device
            ) from exc
        self._lock = threading.Lock()
        self._compiled: Callable[..., Any] | None = None
        self._mode = "none"
        if s.model_file.suffix == ".pt2":
            self._load_program()
        else:
            self._load_onnx()
        if s.compile != "none":
            self._compile(s.compile)
        log.info("torch backend: %s", self.description)

    def _load_onnx(self) -> None:
        path = self.settings.model_file
        net = load_onnx_classifier(path)
        model = onnx.load(str(path), load_external_data=False)
        initializers = {init.name for init in model.graph.initializer}
        if len([i for i in model.graph.input if i.name not in initializers]) != 1:
            raise ConfigError(
                path,
                "(graph inputs)",
                "one input (the torch backend's ONNX interpreter runs single-input classifiers)",
                [i.name for i in model.graph.input],
            )
        self._net: OnnxClassifier | None = net.folded().to(self._device)
        self._inputs, self._outputs = onnx_signature(path)
        features = self.spec.features_output
        if (
            features is not None
            and features not in {o.name for o in self._outputs}
            and features in self._net.tensor_names
        ):
            # An internal activation: the interpreter returns it, so declare it.
            self._outputs = [*self._outputs, TensorSpec(features, "FP32", inferred_shape(model, features))]
        self._tensor_names = self._net.tensor_names
        self._what = "onnx interpreter"

    def _load_program(self) -> None:
        path = self.settings.model_file
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # deserialisation raises many types; all mean the file is unusable
            raise ConfigError(path, "(file)", f"a program saved by torch.export.save ({exc})") from exc
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, self._device)
        in_spec = program.call_spec.in_spec
        if in_spec is not None and in_spec.num_children == 2 and in_spec.child(1).num_leaves:
            raise ConfigError(path, "(inputs)", "a program taking positional tensors only", "keyword inputs")
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        names = list(program.graph_signature.user_inputs)
        values = [placeholders[name].meta["val"] for name in names]
        for name, value in zip(names, values):
            if not isinstance(value.shape[0], torch.SymInt):
                raise ConfigError(
                    path,
                    f"(input {name})",
                    "a dynamic batch dimension (export with dynamic_shapes and torch.export.Dim)",
                    list(value.shape),
                )
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        output_values = [
            arg.meta["val"] for arg in pytree.tree_leaves(output_node.args[0]) if isinstance(arg, torch.fx.Node)
        ]
        out_spec = program.call_spec.out_spec
        if out_spec.type is dict:
            output_names = [str(key) for key in out_spec.context]
        else:
            declared = [o.name for o in self.spec.outputs]
            if self.spec.features_output:
                declared.append(self.spec.features_output)
            output_names = declared[: len(output_values)] + [
                f"output_{i}" for i in range(len(declared), len(output_values))
            ]
        self._input_names = names
        self._output_names = output_names
        self._inputs = [spec_of(name, value) for name, value in zip(names, values)]
        self._outputs = [spec_of(name, value) for name, value in zip(output_names, output_values)]
        self._module = program.module()
        self._net = None
        self._tensor_names = set(output_names)
        self._what = "torch.export program"

    def _compile(self, mode: str) -> None:
        """Trace (ONNX: torch.export of the interpreter) and compile, then warm up the buckets,
        so a missing toolchain shows at load. Any failure leaves the model eager."""
        try:
            shapes = [spec.shape for spec in self._inputs]
            if any(d < 0 for shape in shapes for d in shape):
                raise ValueError(
                    "an input has a variable non-batch dimension; compiled models take fixed "
                    f"item shapes ({[list(s) for s in shapes]})"
                )
            if self._net is not None:
                names = [o.name for o in self._outputs]
                wrapper = NamedOutputs(self._net, names)
                example = torch.zeros(
                    (2, *shapes[0]),
                    dtype=TORCH_DTYPES.get(self._inputs[0].datatype, torch.float32),
                    device=self._device,
                )
                program = torch.export.export(
                    wrapper, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False
                )
                module, self._compiled_names = program.module(), names
                self._compiled_inputs = [self._net.input_name]
            else:
                module, self._compiled_names = self._module, self._output_names
                self._compiled_inputs = self._input_names
            compiled = self._compiled = torch.compile(module, mode=mode)
            self._mode = mode
            # Every bucket up to WARM_ROWS once (twice with CUDA graphs: the first call of a shape
            # warms up, the second records), so compiling and recording happen here, not on live
            # batches. Few graphs result: size 1 is specialised, the rest share symbolic batch sizes.
            for rows in [1 << i for i in range(WARM_ROWS.bit_length())] * (2 if mode == "reduce-overhead" else 1):
                zeros = {
                    spec.name: torch.zeros(
                        (rows, *spec.shape), device=self._device, dtype=TORCH_DTYPES.get(spec.datatype, torch.float32)
                    )
                    for spec in self._inputs
                }
                self._run_compiled(compiled, zeros, self._compiled_names[:1])
        except Exception as exc:  # noqa: BLE001 - no toolchain, an op Inductor lacks, a failed trace: eager
            log.warning("torch backend: torch.compile(mode=%r) failed, running eager: %s", mode, exc)
            self._compiled, self._mode = None, "none"

    # -- the Backend interface ----------------------------------------------------------------

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """ONNX: the graph's declared inputs and outputs (onnx_signature), plus `features_output`
        when it names an internal tensor. .pt2: the exported program's own placeholders and
        outputs (shapes and dtypes as traced), named as the module docstring says."""
        return list(self._inputs), list(self._outputs)

    @property
    def description(self) -> str:
        compiled = f", compile={self._mode}" if self._mode != "none" else ""
        return f"torch:{self._device} ({self._what}{compiled})"

    @property
    def device(self) -> torch.device:
        return self._device

    def infer(self, inputs: dict[str, Any], outputs: list[str], deadline: float | None = None) -> dict[str, Any]:
        unknown = [name for name in outputs if name not in self._tensor_names]
        if unknown:
            raise BackendError(f"model has no tensor {unknown[0]!r} to return")
        feeds = {name: on_device(value, self._device) for name, value in inputs.items()}
        try:
            compiled = self._compiled
            if compiled is not None and set(outputs) <= set(self._compiled_names):
                try:
                    results = self._run_compiled(compiled, feeds, outputs)
                except Exception as exc:  # noqa: BLE001 - a shape it cannot compile, a toolchain gone: eager
                    log.warning("torch backend: compiled model failed, running eager from now on: %s", exc)
                    self._compiled, self._mode = None, "none"
                    results = self._run_eager(feeds, outputs)
            else:
                results = self._run_eager(feeds, outputs)
        except BackendError:
            raise
        except Exception as exc:  # torch raises RuntimeError, ValueError, IndexError...: the batch failed
            raise BackendError(f"model execution failed: {exc}") from exc
        return dict(zip(outputs, results))

    # -- running ------------------------------------------------------------------------------

    def _run_eager(self, feeds: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        with torch.no_grad():
            if self._net is not None:
                values = self._net.run(the_input(feeds, self._net.input_name), outputs)
            else:
                by_name = dict(
                    zip(self._output_names, pytree.tree_leaves(self._module(*ordered(feeds, self._input_names))))
                )
                values = [by_name[name] for name in outputs]
        return [self._declared_dtype(name, value) for name, value in zip(outputs, values)]

    def _run_compiled(
        self, compiled: Callable[..., Any], feeds: dict[str, torch.Tensor], outputs: list[str]
    ) -> list[torch.Tensor]:
        """One call of the compiled model on the batch padded to its bucket; outputs sliced back
        and cloned out of CUDA graphs' static buffers (a later replay overwrites them)."""
        args = ordered(feeds, self._compiled_inputs)
        rows = args[0].shape[0]
        bucket = 1 << max(rows - 1, 0).bit_length()
        with self._lock, torch.inference_mode():
            if bucket != rows:
                args = [torch.cat([a, a.new_zeros((bucket - rows, *a.shape[1:]))]) for a in args]
            # Compiled graphs are guarded on inference vs ordinary tensors: always pass the former
            # (the serving pipeline's batches already are; a caller outside inference mode pays one
            # device copy rather than a recompile).
            args = [a if a.is_inference() else a.clone() for a in args]
            if self._mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            by_name = dict(zip(self._compiled_names, pytree.tree_leaves(compiled(*args))))
            values = [by_name[name][:rows] for name in outputs]
        # Outside inference mode, clone() makes ordinary tensors of the results (inference
        # tensors cannot be saved for autograd by later callers); on the device, never the host.
        values = [value.clone() for value in values]
        return [self._declared_dtype(name, value) for name, value in zip(outputs, values)]

    def _declared_dtype(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Graph outputs in the dtype the model declares (FP16 outputs of an FP16 ONNX model come
        back half, as from ONNX Runtime); the interpreter computes everything in float32."""
        declared = next((o.datatype for o in self._outputs if o.name == name), None)
        if declared in FLOATS and value.is_floating_point() and value.dtype != TORCH_DTYPES[declared]:
            return value.to(TORCH_DTYPES[declared])
        return value
