"""Container HEALTHCHECK and Kubernetes exec probe: ask the gateway's grpc.health.v1 service whether
it is SERVING.

    python /opt/guard/healthcheck.py [SERVICE]      # "" (the whole server) by default; a model name works too

Exit 0 when the service is SERVING, 1 otherwise (not serving, unknown service, no answer in time).
The address comes from GUARD_HEALTH_ADDRESS (default 127.0.0.1:8001). Only the installed grpcio and
grpcio-health-checking packages are needed, so the image carries no downloaded probe binary.

A gateway serving TLS (guard serve --tls-cert) is probed over TLS when GUARD_HEALTH_TLS_CA names
the CA that signed its certificate; GUARD_HEALTH_TLS_CERT and GUARD_HEALTH_TLS_KEY add a client
certificate for mutual TLS (--tls-client-ca); GUARD_HEALTH_TLS_SERVER_NAME is the name to check in
the server's certificate when it does not cover the probed address (the certificate names the
Service, the probe dials 127.0.0.1). Health needs no bearer token. This is how Kubernetes probes a
TLS gateway: its native gRPC probe speaks only plaintext (deploy/k8s/base/deployment.yaml).
"""

from __future__ import annotations

import os
import sys


def _channel(address: str):
    import grpc

    ca = os.environ.get("GUARD_HEALTH_TLS_CA")
    if not ca:
        return grpc.insecure_channel(address)

    def read(variable: str) -> bytes | None:
        path = os.environ.get(variable)
        if not path:
            return None
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("GUARD_HEALTH_TLS_CA"),
        private_key=read("GUARD_HEALTH_TLS_KEY"),
        certificate_chain=read("GUARD_HEALTH_TLS_CERT"),
    )
    name = os.environ.get("GUARD_HEALTH_TLS_SERVER_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, credentials, options=options)


def main(argv: list[str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service = argv[0] if argv else ""
    address = os.environ.get("GUARD_HEALTH_ADDRESS", "127.0.0.1:8001")
    timeout = float(os.environ.get("GUARD_HEALTH_TIMEOUT", "2"))
    try:
        with _channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except OSError as exc:
        print(f"{address}: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
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
