"""Kafka TLS/SASL settings: validated at load, passed to every client, secrets never shown.

The embedded Tansu 0.6.0 broker could not be used to test them end to end (see the
README): its `--cert` and `--key` options exclude each other, a `tls://` listener
ends every handshake with "early eof", and with `--authentication` it refuses
`tansu user create` itself and answers every SASL handshake with NoSharedMechanism.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from schemas.config import KafkaSecurity, load_config
from schemas.errors import ConfigError
from streams.kafka import clients as kafka_clients
from streams.join.faust_adapter import faust_credentials

ROOT = Path(__file__).resolve().parent.parent
ENV = {"DLABEL_PII_KEY": "k"}


def _write(tmp_path, kafka: dict) -> Path:
    data = yaml.safe_load((ROOT / "examples" / "ctr.yaml").read_text())
    data["kafka"] = kafka
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_scram_password_from_environment_never_in_repr(tmp_path):
    path = _write(tmp_path, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                             "sasl_username": "dlabel"})
    cfg = load_config(path, environ={**ENV, "DLABEL_KAFKA_PASSWORD": "hunter2-secret"})
    assert cfg.kafka.sasl_password == "hunter2-secret"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.kafka)
    kw = kafka_clients.kafka_python(cfg.kafka)
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                  "sasl_plain_username": "dlabel", "sasl_plain_password": "hunter2-secret"}
    creds = faust_credentials(cfg.kafka)
    assert creds.username == "dlabel" and str(creds.protocol.value) == "SASL_PLAINTEXT"
    assert str(creds.mechanism.value) == "SCRAM-SHA-512"


def test_missing_password_names_the_field_and_the_fix(tmp_path):
    path = _write(tmp_path, {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                             "sasl_username": "u"})
    with pytest.raises(ConfigError, match=r"kafka.sasl_password_env: environment variable "
                                          r"DLABEL_KAFKA_PASSWORD is not set"):
        load_config(path, environ=ENV)


def test_password_file_and_tls_files(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked at load")
    path = _write(tmp_path, {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                             "sasl_username": "u", "sasl_password_file": str(secret),
                             "ssl_cafile": str(ca)})
    cfg = load_config(path, environ=ENV)
    assert cfg.kafka.sasl_password == "from-a-file" and cfg.kafka.uses_ssl
    kw = kafka_clients.kafka_python(cfg.kafka)
    assert kw["ssl_cafile"] == str(ca) and kw["sasl_mechanism"] == "SCRAM-SHA-256"


@pytest.mark.parametrize("kafka,field", [
    ({"security_protocol": "SASL"}, "kafka.security_protocol"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "kafka.ssl_cafile"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI", "sasl_username": "u"},
     "kafka.sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "kafka.sasl_username"),
    ({"sasl_password": "inline"}, "kafka"),  # passwords never live in the config file
])
def test_bad_security_settings_fail_at_load(tmp_path, kafka, field):
    with pytest.raises(ConfigError, match=rf"^.*{field}"):
        load_config(_write(tmp_path, kafka), environ={**ENV, "DLABEL_KAFKA_PASSWORD": "x"})


def test_default_is_plaintext_for_every_library():
    sec = KafkaSecurity()
    assert kafka_clients.kafka_python(sec) == {"security_protocol": "PLAINTEXT"}
    assert kafka_clients.aiokafka(sec) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(sec) is None


CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaConsumer",
           "AIOKafkaProducer", "App"}


def test_every_kafka_client_in_the_code_gets_the_security_settings():
    """Each client construction in streams/ and jobs/ passes kafka_clients' arguments."""
    missing = []
    for path in sorted([*ROOT.glob("streams/*.py"), *ROOT.glob("jobs/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in CLIENTS:
                continue
            passed = ast.unparse(node)
            if "kafka_clients." not in passed:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not missing, f"clients built without the kafka: settings: {missing}"
