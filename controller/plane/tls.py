"""What the controller's ports present and whom they trust, renewed without a restart.

Two sources of the serving certificate:

- ServerTLS: files (hand-placed, or a cert-manager Secret): read again whenever they change,
  so a renewed certificate is served from the next connection on;
- ManagedTLS: issued by the controller's own CA (controller/plane/authority.py) for the
  names agents dial, renewed in memory once two thirds of its validity have passed.

Either gives two kinds of server credentials: `credentials(source)` for the NodePlane port
(mutual TLS: the client certificate must chain to the trusted CAs) and
`credentials(source, mutual=False)` for the bootstrap port (server authentication only, where
agents trade a token for a client certificate). gRPC asks for the current material at every
new handshake; established connections keep theirs.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from weir.common.logs import get_logger
from weir.controller.plane.authority import Authority, Served, not_after

log = get_logger("weir.server")

Material = tuple[bytes, bytes, bytes]  # (key, certificate chain, trusted client CAs), PEM


class ServingSource(Protocol):
    def material(self) -> Material: ...

    def not_after(self) -> datetime.datetime | None:
        """When the serving certificate in use now expires."""
        ...


def credentials(source: ServingSource, *, mutual: bool = True) -> grpc.ServerCredentials:
    """Credentials that take the source's material anew whenever it changed."""
    given = [source.material()]

    def configuration(m: Material) -> grpc.ServerCertificateConfiguration:
        key, chain, roots = m
        return grpc.ssl_server_certificate_configuration(
            [(key, chain)], root_certificates=roots if mutual else None
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            now = source.material()
        except Exception:  # keep serving what works; the source logs why
            return None
        if now == given[0]:
            return None
        given[0] = now
        return configuration(now)

    # gRPC keeps the certificates it has when fetch returns None; the typing stubs say
    # otherwise.
    return grpc.dynamic_ssl_server_credentials(
        configuration(given[0]),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=mutual,
    )


@dataclass
class ServerTLS:
    cert: Path
    key: Path
    # Client certificates (agents, weirctl) must be signed by it or by the extra roots.
    client_ca: Path | None
    extra_roots: bytes = b""  # the controller's own CA, which signs token-issued certificates
    _read: dict[Path, tuple[float, bytes]] = field(default_factory=dict, repr=False)

    def _file(self, path: Path) -> bytes:
        mtime = path.stat().st_mtime
        cached = self._read.get(path)
        if cached is None or cached[0] != mtime:
            if cached is not None:
                log.info("TLS file changed: serving it from the next connection", path=str(path))
            cached = self._read[path] = (mtime, path.read_bytes())
        return cached[1]

    def material(self) -> Material:
        roots = self.extra_roots + (self._file(self.client_ca) if self.client_ca else b"")
        return self._file(self.key), self._file(self.cert), roots

    def not_after(self) -> datetime.datetime | None:
        return not_after(x509.load_pem_x509_certificate(self._file(self.cert)))


class ManagedTLS:
    """Serving certificates from the controller's CA for `names`; client certificates must
    chain to that CA, or to `client_ca` (hand-placed node and operator certificates)."""

    def __init__(
        self,
        authority: Authority,
        names: Sequence[str],
        *,
        validity: datetime.timedelta = datetime.timedelta(days=7),
        client_ca: Path | None = None,
    ) -> None:
        if not names:
            raise ValueError("a serving certificate needs at least one name")
        self.authority = authority
        self.names = tuple(names)
        self.validity = validity
        self.client_ca = client_ca
        self._lock = threading.Lock()
        self._served: Served | None = None
        self._renew_at = datetime.datetime.min.replace(tzinfo=datetime.UTC)

    def _current(self) -> Served:
        with self._lock:
            now = datetime.datetime.now(datetime.UTC)
            if self._served is None or now >= self._renew_at:
                self._served = self.authority.issue_server(self.names, self.validity)
                lifetime = self._served.not_after - now
                self._renew_at = now + lifetime * 2 / 3
                log.info(
                    "serving certificate issued",
                    names=list(self.names),
                    not_after=self._served.not_after.isoformat(),
                )
            return self._served

    def material(self) -> Material:
        served = self._current()
        roots = self.authority.cert_pem
        if self.client_ca is not None:
            roots += self.client_ca.read_bytes()
        return served.key_pem, served.chain_pem, roots

    def not_after(self) -> datetime.datetime | None:
        return self._current().not_after
