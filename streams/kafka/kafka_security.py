"""Secured listeners for ``KafkaBroker``: SASL_SSL, SASL_PLAINTEXT and SSL (mutual TLS).

``BrokerSecurity`` says which listeners a ``KafkaBroker`` opens besides its PLAINTEXT
one (which stays, with the controller and inter-broker traffic, unsecured):

- ``SASL_SSL`` / ``SASL_PLAINTEXT``: SCRAM (SHA-512 by default) users, created when the
  storage is formatted (``kafka-storage format --add-scram``, i.e. ``StorageTool
  --add-scram 'SCRAM-SHA-512=[name=alice,password=...]'``); ``SASL_SSL`` also needs TLS.
- ``SSL``: TLS with client certificates required (``ssl.client.auth=required``, mutual
  TLS; ``ssl_client_auth`` says otherwise), checked against ``ServerTls.cafile``.

``ServerTls`` names PEM files: the broker's certificate chain, its unencrypted PKCS#8
private key (``-----BEGIN PRIVATE KEY-----``) and the CA(s) client certificates must
chain to. They go into ``server.properties`` inline (``ssl.keystore.type=PEM`` with
``ssl.keystore.certificate.chain`` / ``ssl.keystore.key``, ``ssl.truststore.type=PEM``
with ``ssl.truststore.certificates``): Kafka reads a PEM keystore *file* only with an
encrypted key. The working directory holding them is private (``mkdtemp``: mode 0700)
and removed on stop. SCRAM passwords are on the format command line (a short-lived
JVM): this is for tests and demos, not for production secrets.

No authorizer is configured: every authenticated principal may do everything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = ["BrokerSecurity", "ServerTls", "SECURE_PROTOCOLS", "SCRAM_MECHANISMS",
           "scram_format_args", "listener_properties", "escape_property"]

#: protocols of the listeners ``BrokerSecurity`` can add (each listener is named after it)
SECURE_PROTOCOLS = ("SASL_SSL", "SASL_PLAINTEXT", "SSL")
#: SASL mechanisms whose users ``kafka-storage format --add-scram`` creates
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
CLIENT_AUTH = ("required", "requested", "none")
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule required;"

# what the --add-scram argument syntax carries safely without quoting
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_PASSWORD = re.compile(r"[^\s,\[\]=\"\\]{1,256}")


@dataclass(frozen=True)
class ServerTls:
    """PEM files of the broker's TLS identity and of the CA its client certificates need."""
    certfile: str  # the broker's certificate, then any intermediates
    keyfile: str   # its private key: unencrypted PKCS#8 ("BEGIN PRIVATE KEY")
    cafile: str    # CA certificate(s) that client certificates must chain to

    def pem(self) -> tuple[str, str, str]:
        """(certificate chain, private key, CA certificates) as PEM text; ValueError if a
        file cannot be read or the key is not unencrypted PKCS#8."""
        texts = []
        for what, path in (("certfile", self.certfile), ("keyfile", self.keyfile),
                           ("cafile", self.cafile)):
            try:
                texts.append(Path(path).read_text())
            except OSError as e:
                raise ValueError(f"ServerTls.{what}: cannot read {path!r} ({e.strerror})") from None
        chain, key, ca = texts
        if "-----BEGIN PRIVATE KEY-----" not in key:
            raise ValueError(f"ServerTls.keyfile: {self.keyfile!r} is not an unencrypted PKCS#8 "
                             "PEM key (-----BEGIN PRIVATE KEY-----), which Kafka's PEM keystore "
                             "needs; convert it with `openssl pkcs8 -topk8 -nocrypt`")
        for what, path, text in (("certfile", self.certfile, chain), ("cafile", self.cafile, ca)):
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ValueError(f"ServerTls.{what}: {path!r} holds no PEM certificate")
        return chain, key, ca


@dataclass(frozen=True)
class BrokerSecurity:
    """The secured listeners of a ``KafkaBroker`` (none by default).

    ``listeners``: protocols from ``SECURE_PROTOCOLS``, one listener each, named after
    its protocol. ``scram_users``: ``{name: password}`` created at format time for
    ``scram_mechanism`` (needed by the SASL listeners; passwords kept out of ``repr``).
    ``tls``: needed by the TLS listeners. ``ssl_client_auth``: the SSL listener's
    ``ssl.client.auth`` (``required``: mutual TLS).
    """
    listeners: tuple[str, ...] = ()
    tls: ServerTls | None = None
    scram_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    scram_mechanism: str = "SCRAM-SHA-512"
    ssl_client_auth: str = "required"

    def __post_init__(self) -> None:
        object.__setattr__(self, "listeners", tuple(self.listeners))
        object.__setattr__(self, "scram_users", dict(self.scram_users))
        bad = [p for p in self.listeners if p not in SECURE_PROTOCOLS]
        if bad or len(set(self.listeners)) != len(self.listeners):
            raise ValueError(f"BrokerSecurity.listeners: {list(self.listeners)} must be distinct "
                             f"protocols out of {', '.join(SECURE_PROTOCOLS)}")
        if self.scram_mechanism not in SCRAM_MECHANISMS:
            raise ValueError(f"BrokerSecurity.scram_mechanism: {self.scram_mechanism!r} is not "
                             f"one of {', '.join(SCRAM_MECHANISMS)}")
        if self.ssl_client_auth not in CLIENT_AUTH:
            raise ValueError(f"BrokerSecurity.ssl_client_auth: {self.ssl_client_auth!r} is not "
                             f"one of {', '.join(CLIENT_AUTH)}")
        if any(p.endswith("SSL") for p in self.listeners) and self.tls is None:
            raise ValueError("BrokerSecurity: a TLS listener (SSL, SASL_SSL) needs "
                             "tls=ServerTls(...)")
        if any(p.startswith("SASL_") for p in self.listeners) and not self.scram_users:
            raise ValueError("BrokerSecurity: a SASL listener needs scram_users={name: password}")
        for name, password in self.scram_users.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"BrokerSecurity.scram_users: user name {name!r} must match "
                                 f"{_NAME.pattern}")
            if not _PASSWORD.fullmatch(password):
                raise ValueError(f"BrokerSecurity.scram_users: the password of {name!r} must be "
                                 "1-256 characters without whitespace , [ ] = \" or \\")

    @property
    def scram_user_names(self) -> list[str]:
        """The SCRAM users' names (never their passwords)."""
        return sorted(self.scram_users)


def scram_format_args(sec: BrokerSecurity) -> list[str]:
    """``StorageTool format`` arguments creating ``sec``'s SCRAM users (none without a
    SASL listener)."""
    if not any(p.startswith("SASL_") for p in sec.listeners):
        return []
    args = []
    for name, password in sorted(sec.scram_users.items()):
        args += ["--add-scram", f"{sec.scram_mechanism}=[name={name},password={password}]"]
    return args


def listener_properties(sec: BrokerSecurity) -> dict[str, str]:
    """``server.properties`` entries (besides ``listeners`` and the protocol map) for
    ``sec``'s listeners: SASL mechanisms and JAAS per SASL listener, the PEM key and trust
    stores, client authentication on the SSL listener."""
    props: dict[str, str] = {}
    for protocol in sec.listeners:
        prefix = f"listener.name.{protocol.lower()}."
        if protocol.startswith("SASL_"):
            props[prefix + "sasl.enabled.mechanisms"] = sec.scram_mechanism
            props[prefix + f"{sec.scram_mechanism.lower()}.sasl.jaas.config"] = SCRAM_LOGIN_MODULE
        if protocol == "SSL":
            props[prefix + "ssl.client.auth"] = sec.ssl_client_auth
    if sec.tls is not None and any(p.endswith("SSL") for p in sec.listeners):
        chain, key, ca = sec.tls.pem()
        props.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": chain.strip(),
            "ssl.keystore.key": key.strip(),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": ca.strip(),
        })
    return props


def escape_property(value: str) -> str:
    """``value`` as a Java ``.properties`` value (backslashes, line breaks, leading blanks)."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + out if out[:1] in (" ", "\t", "\f") else out
