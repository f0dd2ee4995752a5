"""The controller's certificate authority: it signs the controller's serving certificates and
the agents' short-lived client certificates (controller/plane/identity.py).

    ca = Authority.generate()                       # or Authority.from_pem(cert, key)
    served = ca.issue_server(["weir-controller.weir-system.svc"], timedelta(days=7))
    cert_pem, not_after = ca.issue_client(csr_pem, "node-a", timedelta(hours=12))

A client certificate names its node twice, as the servicer reads identities: DNS SAN and CN.
It is signed for the key in the agent's request (which stays on the node) whatever subject the
request asks for, and never outlives the CA.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
# A certificate is valid from a little before it is made: node clocks may lag the controller's.
BACKDATE = datetime.timedelta(minutes=5)
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class RequestRefused(ValueError):
    """A certificate request the authority will not sign (bad PEM, signature or key)."""


@dataclass(frozen=True)
class Served:
    """A serving certificate and its key (PEM), and when it expires."""

    key_pem: bytes
    chain_pem: bytes  # the certificate, then the CA
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def not_after(cert: x509.Certificate) -> datetime.datetime:
    """The end of validity, timezone-aware (cryptography gives it naive, in UTC)."""
    return cert.not_valid_after.replace(tzinfo=datetime.UTC)


class Authority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def generate(
        cls, common_name: str = "weir-controller CA", validity: datetime.timedelta = CA_VALIDITY
    ) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem_: bytes) -> Authority:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem_, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key must be an EC key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError("the CA key does not match its certificate")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def not_after(self) -> datetime.datetime:
        return not_after(self.cert)

    def _signed(
        self,
        builder: x509.CertificateBuilder,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        validity: datetime.timedelta,
        usage: x509.ObjectIdentifier,
    ) -> x509.Certificate:
        now = _now()
        end = min(now + validity, self.not_after)
        return (
            builder.issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_server(self, names: Sequence[str], validity: datetime.timedelta) -> Served:
        """A serving certificate for these DNS names, with a fresh key."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        )
        cert = self._signed(builder, key.public_key(), validity, ExtendedKeyUsageOID.SERVER_AUTH)
        return Served(key_pem(key), pem(cert) + self.cert_pem, not_after(cert))

    def issue_client(
        self, csr_pem: bytes, node: str, validity: datetime.timedelta
    ) -> tuple[bytes, datetime.datetime]:
        """A client certificate naming node (DNS SAN and CN) for the key that signed the
        request; (PEM, not after). RequestRefused for a request it will not sign."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise RequestRefused(
                f"the certificate request is not a PEM PKCS#10 request: {e}"
            ) from None
        if not csr.is_signature_valid:
            raise RequestRefused("the certificate request's signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, EC_CURVES):
                raise RequestRefused(f"EC curve {public_key.curve.name} is not P-256 or P-384")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise RequestRefused(f"RSA keys need at least {MIN_RSA_BITS} bits")
        else:
            raise RequestRefused("the key must be EC (P-256, P-384) or RSA")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(node))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        )
        cert = self._signed(builder, public_key, validity, ExtendedKeyUsageOID.CLIENT_AUTH)
        return pem(cert), not_after(cert)
