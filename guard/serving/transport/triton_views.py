"""The guard's model config and counters as Triton's ModelConfig and ModelStatistics messages
(proto/inference.proto): what perf_analyzer and Model Analyzer ask a server before and while they
load it. Only the client contract is told: names, datatypes, shapes, batching. Thresholds and
detectors stay out, as they stay out of ModelMetadata (docs/security.md)."""

from __future__ import annotations

from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.spec import TensorSpec
from guard.serving.model_config import ModelConfig
from guard.serving.statistics import COMPUTE_STAGES, Compute, Duration, Snapshot


def data_type(datatype: str) -> str:
    """A v2 datatype name as Triton's enum value's name (BYTES is Triton's TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _format(spec: TensorSpec) -> str:
    return f"FORMAT_{spec.layout}" if spec.layout in ("NCHW", "NHWC") and len(spec.shape) == 3 else "FORMAT_NONE"


def model_config(config: ModelConfig, device: str) -> pb.ModelConfig:
    """`device`: where the model's copy runs (cpu, cuda:N), as the instance group's kind."""
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    return pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend.kind,
        # Requests carry any number of rows up to this; the dims below exclude the batch dimension.
        max_batch_size=config.batching.max_batch_size,
        input=[
            pb.ModelInput(name=s.name, data_type=data_type(s.datatype), format=_format(s), dims=list(s.shape))
            for s in config.inputs
        ],
        output=[
            pb.ModelOutput(name=s.name, data_type=data_type(s.datatype), dims=list(s.shape)) for s in config.outputs
        ],
        instance_group=[pb.ModelInstanceGroup(name=config.name, count=1, kind=kind)],
        dynamic_batching=pb.ModelDynamicBatching(
            max_queue_delay_microseconds=config.batching.max_queue_delay_microseconds,
            preserve_ordering=False,  # a stream's responses may come back out of order (ModelStreamInfer)
        ),
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _compute(c: Compute) -> dict[str, pb.StatisticDuration]:
    return {name: _duration(getattr(c, name)) for name in COMPUTE_STAGES.values()}


def model_statistics(name: str, version: str, s: Snapshot) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success), fail=_duration(s.fail), queue=_duration(s.queue), **_compute(s.compute)
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, **_compute(compute)) for size, compute in sorted(s.batches.items())
        ],
    )
