"""Security settings (``kafka:`` section) for every Kafka client dlabel makes.

dlabel talks to Kafka through three libraries - Faust (the join worker), kafka-python
(admin, sink, tail) and aiokafka (simulator, fetch probes) - and each spells TLS and SASL
its own way. The process sets its pipeline's ``KafkaSecurity`` once (``configure``);
every client construction then asks for its library's keyword arguments here, so that
no client is ever built without them.
"""
from __future__ import annotations

import ssl
from typing import Any, Optional

from schemas.config import KafkaSecurity

_current = KafkaSecurity()


def configure(security: KafkaSecurity) -> None:
    """Use ``security`` for every client this process creates from now on."""
    global _current
    _current = security


def current_security() -> KafkaSecurity:
    """The security settings this process's clients use."""
    return _current


def ssl_context(sec: KafkaSecurity) -> Optional[ssl.SSLContext]:
    """A client TLS context (CA, optional client certificate), or None without TLS."""
    if not sec.uses_ssl:
        return None
    ctx = ssl.create_default_context(cafile=sec.ssl_cafile)
    if sec.ssl_certfile:
        ctx.load_cert_chain(sec.ssl_certfile, sec.ssl_keyfile)
    ctx.check_hostname = sec.ssl_check_hostname
    return ctx


def kafka_python(sec: Optional[KafkaSecurity] = None) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (KafkaConsumer, KafkaProducer, admin)."""
    sec = sec or _current
    kw: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.uses_ssl:
        kw.update(ssl_cafile=sec.ssl_cafile, ssl_certfile=sec.ssl_certfile,
                  ssl_keyfile=sec.ssl_keyfile, ssl_check_hostname=sec.ssl_check_hostname)
    if sec.uses_sasl:
        kw.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username,
                  sasl_plain_password=sec.sasl_password)
    return kw


def aiokafka(sec: Optional[KafkaSecurity] = None) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients."""
    sec = sec or _current
    kw: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.uses_ssl:
        kw["ssl_context"] = ssl_context(sec)
    if sec.uses_sasl:
        kw.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username,
                  sasl_plain_password=sec.sasl_password)
    return kw
