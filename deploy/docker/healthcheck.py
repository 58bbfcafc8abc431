"""Container HEALTHCHECK: ask the gateway's grpc.health.v1 service whether it is SERVING.

    python /opt/guard/healthcheck.py [SERVICE]      # "" (the whole server) by default; a model name works too

Exit 0 when the service is SERVING, 1 otherwise (not serving, unknown service, no answer in time).
The address comes from GUARD_HEALTH_ADDRESS (default 127.0.0.1:8001). Only the installed grpcio and
grpcio-health-checking packages are needed, so the image carries no downloaded probe binary.
Kubernetes ignores HEALTHCHECK and uses its native gRPC probes instead (deploy/k8s/base).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service = argv[0] if argv else ""
    address = os.environ.get("GUARD_HEALTH_ADDRESS", "127.0.0.1:8001")
    timeout = float(os.environ.get("GUARD_HEALTH_TIMEOUT", "2"))
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as exc:
        print(f"{address} service {service!r}: {exc.code().name} {exc.details() or ''}".rstrip(), file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address} service {service!r}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
