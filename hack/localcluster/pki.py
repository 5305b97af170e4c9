"""Certificates and keys of the local cluster: one CA, one serving certificate, client certificates.

Every component serves TLS with the same serving certificate (valid for 127.0.0.1, localhost and the
in-cluster names of the ``kubernetes`` Service) and authenticates to the API server with a client
certificate whose Common Name is the user and whose Organizations are the groups, which is how the
API server's x509 authenticator maps certificates to identities. ECDSA P-256 keys keep generation
in the milliseconds, so a fresh PKI is made on every start.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of the service range is the ClusterIP of the "kubernetes" Service.
SERVING_IPS = ("127.0.0.1", "10.96.0.1")
SERVING_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate authenticates as: user name and groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pki:
    """All files the components need; see :func:`create_pki`."""

    ca: CertPair
    serving: CertPair
    service_account_private_key: Path
    service_account_public_key: Path
    clients: dict[str, CertPair]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    # Backdated by a minute so that a certificate is valid for a process that checks it at once.
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only (a leaf), or certificates and CRLs too (the CA)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    *,
    usages: list[x509.ObjectIdentifier],
    san: x509.SubjectAlternativeName | None,
    directory: Path,
    stem: str,
) -> CertPair:
    key = _new_key()
    builder = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    _write_cert(builder.sign(ca_key, hashes.SHA256()), pair.cert)
    _write_key(key, pair.key)
    return pair


def create_pki(
    directory: Path, clients: list[ClientIdentity], *, extra_serving_ips: tuple[str, ...] = ()
) -> Pki:
    """Writes a new CA, serving certificate, service-account key pair and client certificates.

    ``extra_serving_ips``: more addresses the API server is reached at (the real node's bridge
    address, which pods reach it through).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name, ca = _create_ca(directory)

    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*SERVING_IPS, *extra_serving_ips)]
        + [x509.DNSName(name) for name in SERVING_NAMES]
    )
    serving = _issue(
        ca_key,
        ca_name,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=san,
        directory=directory,
        stem="serving",
    )

    client_pairs: dict[str, CertPair] = {}
    for identity in clients:
        client_pairs[identity.file_stem] = _issue(
            ca_key,
            ca_name,
            _subject(identity),
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            san=None,
            directory=directory,
            stem=f"client-{identity.file_stem}",
        )

    sa_private, sa_public = _create_service_account_key(directory)
    return Pki(
        ca=ca,
        serving=serving,
        service_account_private_key=sa_private,
        service_account_public_key=sa_public,
        clients=client_pairs,
    )


def _create_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Name, CertPair]:
    """The local cluster's CA: its key, its name (the issuer of every certificate) and files."""
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceltrain-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(cert=directory / "ca.crt", key=directory / "ca.key")
    _write_cert(ca_cert, ca.cert)
    _write_key(ca_key, ca.key)
    return ca_key, ca_name, ca


def _create_service_account_key(directory: Path) -> tuple[Path, Path]:
    """The key pair the API server signs and checks ServiceAccount tokens with."""
    sa_key = _new_key()
    sa_private = directory / "service-account.key"
    sa_public = directory / "service-account.pub"
    _write_key(sa_key, sa_private)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return sa_private, sa_public


def _subject(identity: ClientIdentity) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in identity.groups]
        + [x509.NameAttribute(NameOID.COMMON_NAME, identity.user)]
    )


def _ca(pki: Pki) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca.key} is not an EC key")
    return ca_key, x509.load_pem_x509_certificate(pki.ca.cert.read_bytes()).subject


def issue_client_certificate(pki: Pki, identity: ClientIdentity) -> CertPair:
    """A client certificate from the cluster's CA for one more user (a test's own identity)."""
    ca_key, ca_name = _ca(pki)
    return _issue(
        ca_key,
        ca_name,
        _subject(identity),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        san=None,
        directory=pki.ca.cert.parent,
        stem=f"client-{identity.file_stem}",
    )


def issue_server_certificate(pki: Pki, *, stem: str, common_name: str, ips: list[str]) -> CertPair:
    """A serving certificate from the cluster's CA for a server reached at ``ips`` (the kubelet)."""
    ca_key, ca_name = _ca(pki)
    return _issue(
        ca_key,
        ca_name,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
        directory=pki.ca.cert.parent,
        stem=stem,
    )
