"""TLS for the client-facing gRPC port, with certificates that rotate without a restart.

gRPC's dynamic server credentials ask a fetcher for the certificate configuration before each new
TLS handshake; `CertificateFiles` answers None (keep the current one) until a file's (mtime, size,
inode) changes, then reads all of them again. A Kubernetes Secret volume swaps its files with one
symlink rename, cert-manager renews into it, and new connections get the new certificate while
established ones carry on.

Everything read is checked with the standard library's ssl module (the certificate and key form a
pair, the client CA parses) before gRPC sees it: at start-up a bad file is a SettingsError naming
its flag; on a reload it is logged and the files in use stay, and the next handshake tries again
(a certificate rewritten before its key is caught this way until the key follows).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from guard.protocol.errors import SettingsError

log = logging.getLogger("guard.serving.transport")

FLAGS = {"cert": "--tls-cert", "key": "--tls-key", "client_ca": "--tls-client-ca"}


@dataclass(frozen=True)
class TlsPaths:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """Clients must present a certificate this CA signed (mutual TLS)."""

    def named(self) -> dict[str, Path]:
        paths = {"cert": self.cert, "key": self.key}
        if self.client_ca is not None:
            paths["client_ca"] = self.client_ca
        return paths


Signature = tuple[tuple[int, int, int], ...]


class CertificateFiles:
    """The fetcher given to grpc.dynamic_ssl_server_credentials; raises SettingsError at construction."""

    def __init__(self, paths: TlsPaths):
        self.paths = paths
        self.reloads = 0
        """Times a changed set of files was taken into use after start-up."""
        self._seen, self.initial = self._read()
        self._failed: Signature | None = None
        self._lock = threading.Lock()  # handshakes may ask from several of gRPC's threads at once

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            return self._fetch()

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs inside gRPC's handshake: whatever happens, answer (None keeps the configuration in use).
        try:
            if self._signature() == self._seen:
                return None
            seen, config = self._read()
        except Exception as exc:  # noqa: BLE001 - a handshake must never fail on a reload
            self._report(exc)
            return None
        self._seen, self._failed = seen, None
        self.reloads += 1
        log.info("TLS certificates reloaded (%s)", ", ".join(str(p) for p in self.paths.named().values()))
        return config

    def _report(self, exc: BaseException) -> None:
        try:
            signature = self._signature()
        except SettingsError:
            signature = None
        if signature != self._failed:  # once per state of the files, not once per handshake
            self._failed = signature
            log.warning("TLS certificates changed but cannot be used, keeping the current ones: %s", exc)

    def _signature(self) -> Signature:
        signature = []
        for name, path in self.paths.named().items():
            try:
                st = os.stat(path)
            except OSError as exc:
                raise SettingsError(f"{FLAGS[name]} {path}: cannot read: {exc.strerror}") from None
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def _read(self) -> tuple[Signature, grpc.ServerCertificateConfiguration]:
        before = self._signature()
        data = {name: _read(path, FLAGS[name]) for name, path in self.paths.named().items()}
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # An encrypted key would make OpenSSL prompt on the terminal; gRPC cannot use one anyway.
            context.load_cert_chain(self.paths.cert, self.paths.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"--tls-cert {self.paths.cert} and --tls-key {self.paths.key}: do not form a PEM "
                f"certificate chain and its private key ({exc.strerror or exc})"
            ) from None
        if "client_ca" in data:
            try:
                context.load_verify_locations(cadata=data["client_ca"].decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                raise SettingsError(
                    f"--tls-client-ca {self.paths.client_ca}: not PEM CA certificates ({exc})"
                ) from None
        if self._signature() != before:  # changed while being read: the next handshake reads again
            raise SettingsError("the TLS files changed while they were read")
        config = grpc.ssl_server_certificate_configuration(
            [(data["key"], data["cert"])], root_certificates=data.get("client_ca")
        )
        return before, config


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: cannot read: {exc.strerror}") from None


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Credentials for server.add_secure_port: TLS, and mutual TLS (the client's certificate
    required and checked against --tls-client-ca) when a client CA is given."""
    # gRPC's type stub leaves out the None a fetcher returns for "unchanged", which gRPC documents.
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], files)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, fetcher, require_client_authentication=files.paths.client_ca is not None
    )


def certificate_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> CertificateFiles | None:
    """The TLS files the flags name, read and checked; None without --tls-cert (plaintext)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise SettingsError("--tls-cert and --tls-key go together: the certificate and its private key")
    return CertificateFiles(TlsPaths(cert, key, client_ca))
