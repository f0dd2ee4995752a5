"""The agent's identity towards the controller: the certificate its mutual TLS presents.

Two kinds, both given to ControllerClient (nodeagent/controller_client.py):

- TLSConfig: files placed on the node (or by cert-manager), read at every connection, so a
  renewed file is used from the next one;
- TokenIdentity: no files but the Pod's projected ServiceAccount token. The agent makes a
  key that never leaves it, and trades the token for a short-lived certificate naming its
  node (the controller's IssueNodeCertificate, on its bootstrap port, checks the token with
  a TokenReview and binds it to the Pod's node). It asks again, with a fresh token and a fresh
  key, at a random point between half and four fifths of the certificate's life, so agents
  that started together do not renew together; each renewal bumps `generation`, and the
  client moves its stream to the new certificate at once (the controller ends a stream when
  its certificate expires). Until the first certificate, the client waits.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb, pb_grpc

log = get_logger("weir.identity")

BOOTSTRAP_PORT = 9445
RENEW_BETWEEN = (0.5, 0.8)  # of a certificate's life
ISSUE_TIMEOUT = 20.0  # seconds: a TokenReview is behind the answer


def bootstrap_target(controller: str, port: int = BOOTSTRAP_PORT) -> str:
    """The controller's bootstrap address: its host, the bootstrap port."""
    host = controller.rsplit(":", 1)[0] if ":" in controller else controller
    return f"{host}:{port}"


def _options(server_name: str | None) -> list[tuple[str, str | int]]:
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


@dataclass(frozen=True)
class TLSConfig:
    """mTLS material for the agent: its own certificate (naming its node) and the CA."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None  # override the name checked in the server certificate
    generation: Generation = field(default_factory=Generation, compare=False, repr=False)

    async def run(self) -> None:
        """Nothing to keep: the files are read at every connection."""

    async def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, key, cert = await asyncio.to_thread(
            lambda: (self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes())
        )
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        return _options(self.server_name)


class TokenIdentity:
    def __init__(
        self,
        node: str,
        token_file: Path,
        ca: Path,  # the CAs of the controller's serving certificate (the ConfigMap's bundle)
        bootstrap: str,  # host:port of the controller's bootstrap port
        *,
        server_name: str | None = None,
        retry: tuple[float, float] = (0.5, 30.0),  # backoff of failed requests, seconds
    ) -> None:
        self.node = node
        self.token_file = token_file
        self.ca = ca
        self.bootstrap = bootstrap
        self.server_name = server_name
        self.generation = Generation()  # bumped by every certificate received
        self.not_after = 0.0  # Unix time; 0 before the first certificate
        self._retry = retry
        self._material: tuple[bytes, bytes, bytes] | None = None  # roots, key, certificate
        self._ready = asyncio.Event()

    async def run(self) -> None:
        """Get a certificate, then renew it, until cancelled."""
        failures = 0
        while True:
            try:
                issued_at = time.time()
                await self._issue()
                failures = 0
                life = max(0.0, self.not_after - issued_at)
                delay = life * random.uniform(*RENEW_BETWEEN)
            except Exception as e:  # the controller away, a refused token: try again
                failures += 1
                initial, maximum = self._retry
                delay = random.uniform(0, min(maximum, initial * 2 ** min(failures, 16)))
                code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else ""
                details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.warning(
                    "no node certificate from the controller",
                    bootstrap=self.bootstrap,
                    code=code,
                    error=details,
                    retry_in=round(delay, 1),
                    valid_for=round(max(0.0, self.not_after - time.time())),
                )
            await asyncio.sleep(delay)

    async def _issue(self) -> None:
        token = (await asyncio.to_thread(self.token_file.read_text)).strip()
        roots = await asyncio.to_thread(self.ca.read_bytes)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.node)]))
            .sign(key, hashes.SHA256())
        )
        request = pb.IssueNodeCertificateRequest(
            node=self.node, csr=csr.public_bytes(serialization.Encoding.PEM), token=token
        )
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
        async with grpc.aio.secure_channel(
            self.bootstrap, creds, _options(self.server_name)
        ) as channel:
            answer = await pb_grpc.NodePlaneStub(channel).IssueNodeCertificate(
                request, timeout=ISSUE_TIMEOUT
            )
        cert = x509.load_pem_x509_certificate(answer.certificate)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError("the controller's certificate is not for this agent's key")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._material = (roots + answer.ca_bundle, key_pem, answer.certificate)
        self.not_after = float(answer.not_after_unix)
        self._ready.set()
        self.generation.bump()
        log.info(
            "node certificate received",
            node=self.node,
            valid_for=round(self.not_after - time.time()),
        )

    async def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials with the current certificate (waits for the first one)."""
        await self._ready.wait()
        assert self._material is not None
        roots, key, cert = self._material
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        return _options(self.server_name)
