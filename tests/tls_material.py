"""Test TLS material, made fresh with ``cryptography``: a CA, a broker certificate, a client
certificate, and a second CA that signs neither (for the untrusted-CA failure case).

``make_tls_material(directory)`` writes PEM files and returns their paths:

- ``ca.pem``: the test CA (self-signed, CA:TRUE);
- ``server.pem`` / ``server.key``: the broker's certificate (signed by the CA; SAN
  ``localhost``, ``127.0.0.1``, ``::1``; serverAuth) and its key, unencrypted PKCS#8
  (what Kafka's PEM keystore needs);
- ``client.pem`` / ``client.key``: a client certificate (CN ``dlabel-client``, clientAuth)
  for mutual TLS, signed by the CA;
- ``other-ca.pem``: an unrelated CA: a client trusting only it rejects the broker.

Keys are RSA 2048 (every JDK's PEM parser and Python's ssl take them); certificates
are valid from an hour ago for 30 days.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsMaterial", "make_tls_material"]


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the PEM files ``make_tls_material`` wrote."""
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dlabel tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name,
             key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30)))


def _ca(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _key()
    cert = (_builder(_name(cn), _name(cn), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(cn: str, ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, usage,
          san: list[x509.GeneralName] | None = None) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _key()
    b = (_builder(_name(cn), ca_cert.subject, key)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                      content_commitment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=False, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def make_tls_material(directory: Path) -> TlsMaterial:
    """Generate a CA, a broker and a client certificate and an unrelated CA under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("dlabel test CA")
    server_key, server_cert = _leaf(
        "localhost", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1"))])
    client_key, client_cert = _leaf("dlabel-client", ca_key, ca_cert,
                                    ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_cert = _ca("some other CA")
    return TlsMaterial(
        ca=_write_cert(directory / "ca.pem", ca_cert),
        server_cert=_write_cert(directory / "server.pem", server_cert),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.pem", client_cert),
        client_key=_write_key(directory / "client.key", client_key),
        other_ca=_write_cert(directory / "other-ca.pem", other_cert),
    )
