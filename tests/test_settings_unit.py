"""Unit tests of the settings rules: Kafka security (one mapping for aiokafka and faust), what
production refuses, and the private state files of ``wacrm dev``."""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from wacrm.agents.app import broker_credentials
from wacrm.core.settings import Settings, SettingsError, load
from wacrm.dev import _persistent_secrets, open_private, private_dir, write_private

SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "wacrm", "KAFKA_SASL_PASSWORD": "s3cret-password"}
PROD = {"DATABASE_URL": "postgresql://db/wacrm", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "WHATSAPP_APP_SECRET": "0123456789abcdef0123456789abcdef", "WHATSAPP_VERIFY_TOKEN": "a-verify-token",
        "WHATSAPP_ACCESS_TOKEN": "EAAG" + "x" * 60}


def problems(env: dict[str, str], profile: str = "dev") -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(env, profile)  # type: ignore[arg-type]
    return info.value.problems


def system_cafile() -> str:
    cafile = ssl.get_default_verify_paths().cafile
    if not cafile or not os.path.isfile(cafile):
        pytest.skip("no system CA bundle on this machine")
    return cafile


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    s = load({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2"}, "dev")
    assert s.kafka_security_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.kafka_client_kwargs() == {"bootstrap_servers": "a:1,b:2", "security_protocol": "PLAINTEXT"}
    assert broker_credentials(s) is None


def test_sasl_ssl_maps_to_aiokafka_arguments_with_a_verifying_context() -> None:
    s = load({**SASL, "KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "dev")  # case does not matter
    kwargs = s.kafka_security_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "wacrm", "sasl_plain_password": "s3cret-password"}
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert "s3cret-password" not in repr(s)


def test_ssl_with_a_ca_file_and_sasl_plaintext() -> None:
    cafile = system_cafile()
    s = load({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": cafile}, "dev")
    assert set(s.kafka_security_kwargs()) == {"security_protocol", "ssl_context"}
    plain = load({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN"}, "dev")
    assert plain.kafka_security_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "wacrm",
        "sasl_plain_password": "s3cret-password"}


@pytest.mark.parametrize("env", [
    {},
    {"KAFKA_SECURITY_PROTOCOL": "SSL"},
    SASL,
    {**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
])
def test_the_worker_gets_the_same_arguments_through_faust(env: dict[str, str]) -> None:
    s = load(env, "dev")
    through_faust = dict(credentials_to_aiokafka_auth(broker_credentials(s)))
    ours = s.kafka_security_kwargs()
    if through_faust.get("ssl_context") is None:
        through_faust.pop("ssl_context", None)
    assert set(through_faust) == set(ours)
    for key, value in ours.items():
        if key == "ssl_context":
            assert isinstance(through_faust[key], ssl.SSLContext)
        else:
            assert through_faust[key] == value


def test_sasl_needs_mechanism_username_and_password() -> None:
    found = problems({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    assert any(p.startswith("KAFKA_SASL_MECHANISM: required with KAFKA_SECURITY_PROTOCOL=SASL_SSL") and
               "SCRAM-SHA-256" in p for p in found)
    assert any(p.startswith("KAFKA_SASL_USERNAME: required") for p in found)
    assert any(p.startswith("KAFKA_SASL_PASSWORD: required") for p in found)


def test_unknown_values_and_settings_the_protocol_does_not_use_are_refused() -> None:
    assert any(p.startswith("KAFKA_SECURITY_PROTOCOL: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
               for p in problems({"KAFKA_SECURITY_PROTOCOL": "TLS"}))
    assert any(p.startswith("KAFKA_SASL_MECHANISM: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
               for p in problems({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}))
    found = problems({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
    assert "KAFKA_SASL_USERNAME: set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL " \
           "(use SASL_SSL or SASL_PLAINTEXT)" in found
    assert not any("'p'" in p for p in found)  # a password is never echoed
    cafile = system_cafile()
    assert any(p.startswith("KAFKA_SSL_CAFILE: set, but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS")
               for p in problems({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CAFILE": cafile}))


def test_a_ca_file_must_exist_and_hold_certificates(tmp_path: Path) -> None:
    missing = problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(tmp_path / "nope.pem")})
    assert any(p.startswith("KAFKA_SSL_CAFILE: no such file") for p in missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert any(p.startswith("KAFKA_SSL_CAFILE: cannot be read as PEM CA certificates")
               for p in problems({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(junk)}))


def test_production_takes_https_and_loopback_http() -> None:
    assert load(PROD, "prod").whatsapp_api_base_url == "https://graph.facebook.com"
    for url in ("http://127.0.0.1:8090", "http://localhost:8090", "http://[::1]:8090", "https://graph.example"):
        assert load({**PROD, "WHATSAPP_API_BASE_URL": url}, "prod").whatsapp_api_base_url == url


def test_production_refuses_remote_plain_http_and_short_secrets() -> None:
    found = problems({**PROD, "WHATSAPP_API_BASE_URL": "http://graph.facebook.com", "WHATSAPP_APP_SECRET": "short",
                      "WHATSAPP_VERIFY_TOKEN": "verify", "WHATSAPP_ACCESS_TOKEN": "token"}, "prod")
    assert any(p.startswith("WHATSAPP_API_BASE_URL: must be https:// in production") for p in found)
    assert "WHATSAPP_APP_SECRET: too short for production (5 characters, at least 16)" in found
    assert "WHATSAPP_VERIFY_TOKEN: too short for production (6 characters, at least 12)" in found
    assert "WHATSAPP_ACCESS_TOKEN: too short for production (5 characters, at least 16)" in found
    assert not any("short" in p and "'short'" in p for p in found)  # secrets are not echoed
    # the dev profile (wacrm dev, tests) allows all of it
    assert load({**PROD, "WHATSAPP_API_BASE_URL": "http://fake-meta:8090", "WHATSAPP_APP_SECRET": "s"}, "dev")


def test_production_does_not_ask_for_secrets_a_command_does_not_use() -> None:
    s: Settings = load({"DATABASE_URL": "postgresql://db/wacrm"}, "prod", needs=frozenset({"DATABASE_URL"}))
    assert s.whatsapp_app_secret == ""


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: without care, files would be world-readable
    yield
    os.umask(old)


def test_dev_state_files_are_private(tmp_path: Path, usual_umask: None) -> None:
    state = private_dir(tmp_path / "state")
    logs = private_dir(state / "logs")
    secrets = _persistent_secrets(state)
    write_private(state / "dev.json", '{"app_secret": "x"}')
    with open_private(state / "dev.lock", "a+") as lock:
        lock.write("123")
    for d in (state, logs):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in ("secrets.json", "dev.json", "dev.lock"):
        assert stat.S_IMODE((state / f).stat().st_mode) == 0o600, f
    assert _persistent_secrets(state) == secrets  # kept across runs


def test_an_existing_readable_state_file_is_made_private(tmp_path: Path, usual_umask: None) -> None:
    path = tmp_path / "dev.json"
    path.write_text("old, longer contents")
    path.chmod(0o644)
    write_private(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new"
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    private_dir(logs)
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700


def test_no_secret_shows_in_the_settings_repr() -> None:
    secrets = {"WHATSAPP_APP_SECRET": "app-secret-0123456789", "WHATSAPP_ACCESS_TOKEN": "access-token-0123456789",
               "WHATSAPP_VERIFY_TOKEN": "verify-token-0123456789", "LLM_API_KEY": "llm-key-0123456789",
               "LLM_API_BASE_URL": "http://127.0.0.1:9/v1"}
    s = load(secrets, "dev")
    assert s.whatsapp_app_secret == "app-secret-0123456789"  # kept, only not shown
    shown = repr(s)
    assert "whatsapp_phone_number_id" in shown
    for value in secrets.values():
        if "secret" in value or "token" in value or "key" in value:
            assert value not in shown
