"""Standard gRPC health (overall and per model) and server reflection."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def test_health_overall_and_per_model(gateway):
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", "digits"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == serving
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            raise AssertionError("unknown service reported healthy")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_inference_service(gateway):
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        described = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        methods = {m.name for m in described.service[0].method}
        assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata", "ServerLive"} <= methods
