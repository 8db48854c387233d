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


def check_connection(bootstrap: str, sec: Optional[KafkaSecurity] = None,
                     timeout_s: float = 15.0) -> None:
    """Fail fast, naming the cause, when the broker refuses our TLS or SASL settings.

    One connection to the first bootstrap server with aiokafka (which reports a refused
    SASL login or certificate at once; kafka-python retries those until its bootstrap
    timeout and may log only "socket disconnected"). Raises BrokerError for a failed
    TLS handshake or SASL authentication; returns otherwise, also when the broker is
    just unreachable (the clients report that). Nothing to check for PLAINTEXT.
    """
    import asyncio

    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError as AioKafkaError
    from aiokafka.errors import SaslAuthenticationFailed

    from schemas.errors import BrokerError

    sec = sec or _current
    if sec.security_protocol == "PLAINTEXT":
        return
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")

    async def connect() -> None:
        conn = await asyncio.wait_for(
            create_conn(host.strip("[]"), int(port), client_id="dlabel-check",
                        request_timeout_ms=int(timeout_s * 1000), **aiokafka(sec)), timeout_s)
        conn.close()

    try:
        asyncio.run(connect())
    except SaslAuthenticationFailed as e:
        raise BrokerError(
            f"SASL authentication failed at {bootstrap} for user {sec.sasl_username!r} "
            f"({sec.sasl_mechanism}): {e}; check kafka.sasl_username and the password "
            "(kafka.sasl_password_env or kafka.sasl_password_file)") from None
    except ssl.SSLCertVerificationError as e:
        raise BrokerError(
            f"TLS to {bootstrap}: certificate verify failed ({e.verify_message}); the broker's "
            f"certificate is not trusted by kafka.ssl_cafile ({sec.ssl_cafile or 'system CAs'})"
            + (" or does not name this host (kafka.ssl_check_hostname)"
               if sec.ssl_check_hostname else "")) from None
    except ssl.SSLError as e:
        raise BrokerError(f"TLS handshake with {bootstrap} failed ({e.reason or e}); check "
                          "kafka.ssl_cafile and the client certificate (kafka.ssl_certfile, "
                          "kafka.ssl_keyfile)") from None
    except (OSError, asyncio.TimeoutError, AioKafkaError, ValueError):
        return  # unreachable or not answering: the clients say so in their own words
