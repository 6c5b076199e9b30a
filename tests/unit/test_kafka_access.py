"""broker.security: what a config may say, the errors naming the key when it is wrong,
and the connection arguments KafkaAccess gives aiokafka's clients and Faust."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from mailstream.cli.main import main
from mailstream.config.load import load_config, parse_config
from mailstream.exceptions import ConfigError
from mailstream.kafka.access import KafkaAccess, kafka_access

SERVERS = "k1.example:9093,k2.example:9093"
SECRET = "s3cret-not-to-be-shown"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def sasl_ssl(ca: Path, **changes: Any) -> dict[str, Any]:
    return {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "mailstream",
        "password_env": "KAFKA_PASSWORD",
        "ca_file": str(ca),
    } | changes


def access_for(security: dict[str, Any], env: dict[str, str] | None = None) -> KafkaAccess:
    raw = {"broker": {"url": f"kafka://{SERVERS}", "security": security}}
    config = parse_config(raw, "m.yaml", env={})
    return kafka_access(config, {"KAFKA_PASSWORD": SECRET} if env is None else env)


@pytest.mark.parametrize(
    ("security", "key", "reason"),
    [
        ({"protocol": "SASL_SSL"}, "sasl_mechanism", "required when protocol is SASL_SSL"),
        ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "username", "required"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"},
            "password_env",
            "required when protocol is SASL_SSL",
        ),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism", "SCRAM-SHA-512"),
        ({"username": "u"}, "username", "only used with protocol SASL_PLAINTEXT or SASL_SSL"),
        ({"protocol": "SSL", "password_env": "P"}, "password_env", "only used with protocol SASL"),
        ({"protocol": "SSL", "ca_file": "/no/such/ca.pem"}, "ca_file", "no such file"),
        ({"protocol": "SSL", "password_env": "not a name"}, "password_env", "pattern"),
        ({"protocol": "SSL", "tls": True}, "tls", "unknown key"),
    ],
)
def test_a_bad_security_section_names_the_key(
    security: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": {"security": security}}, "m.yaml", env={})
    lines = [line for line in str(info.value).splitlines() if f"broker.security.{key}:" in line]
    assert lines and reason in lines[0], str(info.value)


def test_files_are_only_for_tls_and_a_key_needs_its_certificate(ca_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker\.security\.ca_file: .*only used with protocol"):
        parse_config({"broker": {"security": {"ca_file": str(ca_file)}}}, "m.yaml", env={})
    only_key = {"protocol": "SSL", "key_file": str(ca_file)}
    with pytest.raises(ConfigError, match=r"broker\.security\.key_file: .*set only with cert_file"):
        parse_config({"broker": {"security": only_key}}, "m.yaml", env={})


def test_a_broker_url_with_options_points_to_broker_security() -> None:
    url = "kafka://k1:9093?security_protocol=SASL_SSL"
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": {"url": url}}, "m.yaml", env={})
    assert str(info.value).startswith("m.yaml: broker.url: ")
    assert "broker.security" in str(info.value)


def test_an_unset_password_variable_fails_naming_the_key(ca_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        access_for(sasl_ssl(ca_file), env={})
    assert str(info.value).startswith("broker.security.password_env: ")
    assert "KAFKA_PASSWORD is not set" in str(info.value)


def test_a_ca_file_that_is_not_a_certificate_fails_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^broker\.security\.ca_file: cannot be used"):
        access_for(sasl_ssl(bad))


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    access = access_for({})
    assert access.client_kwargs() == {
        "bootstrap_servers": SERVERS,
        "security_protocol": "PLAINTEXT",
    }
    assert access.faust_credentials() is None
    assert KafkaAccess.plain(SERVERS) == access


def test_sasl_ssl_gives_scram_and_a_verifying_tls_context(ca_file: Path) -> None:
    access = access_for(sasl_ssl(ca_file))
    kwargs = access.client_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": SERVERS,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "mailstream",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # ca_file's, not the system's


def test_the_access_is_built_once_per_process(
    ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    raw = {"broker": {"url": f"kafka://{SERVERS}", "security": sasl_ssl(ca_file)}}
    first = kafka_access(parse_config(raw, "m.yaml", env={}))
    assert kafka_access(parse_config(raw, "m.yaml", env={})) is first  # one TLS context
    monkeypatch.setenv("KAFKA_PASSWORD", "rotated")
    assert kafka_access(parse_config(raw, "m.yaml", env={})).password == "rotated"


def test_ssl_alone_and_sasl_plaintext(ca_file: Path) -> None:
    ssl_only = access_for({"protocol": "SSL", "ca_file": str(ca_file), "check_hostname": False})
    kwargs = ssl_only.client_kwargs()
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    assert not kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still checks the CA
    plain = access_for(sasl_ssl(ca_file, protocol="SASL_PLAINTEXT", ca_file=None))
    kwargs = plain.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in kwargs


def test_a_client_certificate_is_presented(tmp_path: Path) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("mailstream-worker")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    files = {f"{n}_file": str(tmp_path / f) for n, f in [("ca", "ca.pem"), ("cert", "client.pem")]}
    access = access_for({"protocol": "SSL", **files, "key_file": str(tmp_path / "client.key")})
    assert access.ssl_context is not None
    wrong_key = trustme.CA().issue_cert("x").private_key_pem
    wrong_key.write_to_path(str(tmp_path / "other.key"))
    with pytest.raises(ConfigError, match=r"^broker\.security\.cert_file: cannot be used"):
        access_for({"protocol": "SSL", **files, "key_file": str(tmp_path / "other.key")})


@pytest.mark.parametrize("protocol", ["SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_gets_the_same_arguments_as_every_other_client(ca_file: Path, protocol: str) -> None:
    security = sasl_ssl(ca_file, protocol=protocol)
    if protocol == "SSL":
        security = {"protocol": "SSL", "ca_file": str(ca_file)}
    if protocol == "SASL_PLAINTEXT":
        security["ca_file"] = None
    access = access_for(security)
    faust_kwargs = dict(credentials_to_aiokafka_auth(access.faust_credentials()))
    ours = access.client_kwargs()
    del ours["bootstrap_servers"]
    assert {k: v for k, v in faust_kwargs.items() if v is not None} == ours


async def test_aiokafka_clients_take_the_arguments(ca_file: Path) -> None:
    kwargs = access_for(sasl_ssl(ca_file)).client_kwargs()
    clients = [
        AIOKafkaProducer(**kwargs),
        AIOKafkaConsumer(**kwargs, group_id=None),
        AIOKafkaAdminClient(**kwargs),
    ]
    for made in clients:
        inner = made.client if isinstance(made, AIOKafkaProducer) else made._client
        assert inner._security_protocol == "SASL_SSL"
        assert inner._sasl_mechanism == "SCRAM-SHA-512"
        assert inner._ssl_context is kwargs["ssl_context"]
    for made in clients:
        await (made.close() if isinstance(made, AIOKafkaAdminClient) else made.stop())


def test_the_password_is_never_shown(ca_file: Path) -> None:
    access = access_for(sasl_ssl(ca_file))
    assert SECRET not in repr(access) and SECRET not in str(access)
    assert str(access) == SERVERS
    assert SECRET not in repr(access.faust_credentials())


def test_check_names_an_unset_password_variable(
    ca_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    path = tmp_path / "m.yaml"
    lines = "\n".join(f"    {k}: {v}" for k, v in sasl_ssl(ca_file).items())
    path.write_text(f"broker:\n  url: kafka://{SERVERS}\n  security:\n{lines}\n")
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    assert main(["check", str(path)]) == 2
    assert "broker.security.password_env: the environment variable" in capsys.readouterr().err
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "security    SASL_SSL SCRAM-SHA-512 as mailstream" in out and SECRET not in out


def test_relative_files_are_beside_the_config_file(tmp_path: Path, ca_file: Path) -> None:
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "ca.pem").write_bytes(ca_file.read_bytes())
    path = tmp_path / "mailstream.yaml"
    path.write_text("broker:\n  security:\n    protocol: SSL\n    ca_file: kafka/ca.pem\n")
    config = load_config(path, env={})
    assert config.broker.security.ca_file == tmp_path / "kafka" / "ca.pem"
    path.write_text("broker:\n  security:\n    protocol: SSL\n    ca_file: elsewhere.pem\n")
    with pytest.raises(
        ConfigError, match=r"broker\.security\.ca_file: .*no such file: .*/elsewhere"
    ):
        load_config(path, env={})
