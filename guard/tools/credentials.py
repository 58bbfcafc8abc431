"""What the project's own clients (`guard replay`, `guard evaluate --connect`) present to a secured
gateway: TLS trusting `--tls-ca`, a client certificate for mutual TLS (`--tls-cert`/`--tls-key`),
and a bearer token from `--token-file`, else from the environment variable GUARD_TOKEN.

The file wins over the environment, as `guard serve --auth-tokens` wins over GUARD_AUTH_TOKENS: the
flag is explicit, the environment ambient. Every file is read once here, so a file that cannot be
used stops the command with one line naming its flag before any connection is made. The token is
kept out of repr and never logged.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from guard.protocol.errors import SettingsError

if TYPE_CHECKING:  # grpc loads when a channel is made: the CLI imports this module for its flags
    import grpc

ENVIRONMENT = "GUARD_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="PEM CA certificates of the gateway: connect over TLS"
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM client certificate chain (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"a file holding the bearer token sent as 'authorization: Bearer <token>'; without it, the "
        f"token is read from {ENVIRONMENT} when set",
    )


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class ClientCredentials:
    ca: Path | None = None
    """The gateway's CA; set means TLS."""
    cert: Path | None = None
    key: Path | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ClientCredentials:
        """The credentials the flags name (raises SettingsError naming the flag that cannot be used)."""
        ca, cert, key = args.tls_ca, args.tls_cert, args.tls_key
        if (cert is None) != (key is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if cert is not None and ca is None:
            raise SettingsError("--tls-cert needs --tls-ca (the client certificate is presented over TLS)")
        for flag, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
            if path is not None:
                _read(flag, path)
        token = environ.get(ENVIRONMENT) or None
        if args.token_file is not None:
            token = _read("--token-file", args.token_file).decode("utf-8", "replace").strip()
            if not token or any(c.isspace() for c in token):
                raise SettingsError(f"--token-file {args.token_file}: expected one token without spaces")
        return cls(ca, cert, key, token)

    def triton_kwargs(self) -> dict[str, object]:
        """tritonclient.grpc.InferenceServerClient's TLS arguments (it reads the files itself)."""
        if self.ca is None:
            return {}
        return {
            "ssl": True,
            "root_certificates": str(self.ca),
            "private_key": str(self.key) if self.key else None,
            "certificate_chain": str(self.cert) if self.cert else None,
        }

    def headers(self) -> dict[str, str] | None:
        """tritonclient's `headers=`: the bearer token, or None."""
        return {"authorization": f"Bearer {self.token}"} if self.token else None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """A raw gRPC call's `metadata=`: the bearer token, if any."""
        return tuple((self.headers() or {}).items())

    def channel(self, url: str, options: list[tuple[str, int]]) -> grpc.Channel:
        """A gRPC channel to `url`: TLS when --tls-ca is set, else plaintext."""
        import grpc

        if self.ca is None:
            return grpc.insecure_channel(url, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )
        return grpc.secure_channel(url, credentials, options=options)


NONE = ClientCredentials()
"""Plaintext, no token: a local gateway without authentication."""
