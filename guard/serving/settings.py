"""What `guard serve` is started with: ports, limits, the stop's timing, security and the shared
query store, one frozen value the server reads at start (guard.serving.server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from guard.protocol.limits import MAX_CONCURRENCY, MAX_MESSAGE_BYTES
from guard.serving.client_settings import ClientSettings
from guard.serving.quarantine.settings import QuarantineSettings


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    """0 picks a free port (see GuardServer.grpc_port once started)."""
    metrics_port: int = 8002
    """0 picks a free port; -1 disables the metrics endpoint."""
    policy: str | None = None
    """Overrides every model's configured policy when set."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Larger requests fail with RESOURCE_EXHAUSTED before they are decoded."""
    max_concurrency: int = MAX_CONCURRENCY
    """Inference requests in flight at once (unary calls and stream requests); more are refused with
    RESOURCE_EXHAUSTED and a retry hint before they are parsed (guard.serving.transport.admission)."""
    shared_memory: bool = False
    """Accept Triton's system shared-memory extension. Off by default: any client that reaches the
    port could then make the gateway read, and write outputs into, the shared-memory objects its
    user may open (docs/shared-memory.md)."""
    torch_threads: int = 1
    """Threads for the guard's own tensor work; the backend has its own (intra_op_threads)."""
    calibration: str | None = None
    """Overrides every model's [calibration] mode: recalibrate, strict or trust."""
    drain_seconds: float = 5.0
    """After SIGTERM, how long health reports NOT_SERVING while requests are still served. 5 s covers
    the usual propagation of a terminating pod's removal from Kubernetes endpoints (kube-proxy,
    ingress and client-side resolvers, typically 1-3 s) and one interval of a health-checking
    balancer or client that polls every few seconds."""
    exit_timeout_seconds: float = 30.0
    """The most a graceful stop takes, from the signal, the drain period included (Triton's
    --exit-timeout-secs default; keep it below a supervisor's kill deadline, e.g. Kubernetes'
    terminationGracePeriodSeconds minus any preStop hook)."""
    model_control: bool = False
    """Allow the repository RPCs to load and unload models (index: always)."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics binds to, apart from `host`: the gRPC port may face clients while the
    metrics stay on loopback or a cluster-internal interface."""
    publish_thresholds: bool = False
    """Publish guard_detector_threshold on /metrics (off: thresholds help an attacker tune inputs)."""
    reflection: bool = True
    """Serve gRPC server reflection (service descriptors only; deploy/ turns it off)."""
    tls_cert: Path | None = None
    """PEM certificate chain for the gRPC port (--tls-cert); with tls_key, the port speaks only TLS.
    Reloaded when the file changes (guard.serving.transport.tls)."""
    tls_key: Path | None = None
    """PEM private key of tls_cert (--tls-key)."""
    tls_client_ca: Path | None = None
    """PEM CA certificates (--tls-client-ca): clients must present a certificate one of them signed
    (mutual TLS); the certificate's subject is then the client's identity."""
    auth_tokens: Path | None = None
    """File of `name:token` lines (--auth-tokens): calls must carry `authorization: Bearer <token>`;
    the token's name is the client's identity (guard.serving.tokens)."""
    auth_tokens_text: str | None = field(default=None, repr=False)
    """The same lines as text (guard serve reads GUARD_AUTH_TOKENS); auth_tokens wins when both are set."""
    explain_identities: tuple[str, ...] | None = None
    """Identities granted raw detector scores (guard_explain; "*": every one). None: everyone when
    the server does not authenticate, nobody when it does (guard.serving.grants)."""
    client_limits: ClientSettings = field(default_factory=ClientSettings)
    """Per-client quotas for models whose [clients] table leaves them unset (guard serve
    --client-rate, --client-burst, --client-max-concurrency; guard.serving.quotas). Unset: unlimited."""
    query_attack: str | None = None
    """Overrides every model's [clients] query_attack: off, flag or block (guard serve
    --query-attack; guard.serving.query_watch). None: each model's own."""
    query_store: str | None = None
    """A Redis or Valkey URL where every replica keeps the query-attack state (guard serve
    --query-store; guard.serving.shared_queries). None: each process keeps its own."""
    quarantine: QuarantineSettings | None = None
    """Keep every request whose verdict is not clean in a durable store (guard serve --quarantine
    DIR; docs/quarantine.md). None: off."""
