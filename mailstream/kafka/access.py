"""KafkaAccess: where the brokers are and how to connect to them (TLS, SASL), the one
source of every Kafka client's connection arguments, Faust's included."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, UnsupportedSaslMechanismError
from aiokafka.protocol.metadata import MetadataRequest

from mailstream.config.kafka_sections import SASL_PROTOCOLS, TLS_PROTOCOLS, SecurityConfig
from mailstream.config.schema import Config
from mailstream.exceptions import BrokerError, ConfigError

# how long the check at start waits for one broker to answer (a client speaking plain
# Kafka to a TLS listener may otherwise wait for an answer that never comes)
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KafkaAccess:
    """The bootstrap servers and the security settings, with the password resolved and
    the TLS context built once. ``client_kwargs()`` for aiokafka's producers, consumers
    and admin clients; ``faust_credentials()`` for the Faust app. The password never
    shows in ``repr``."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def plain(cls, servers: KafkaAccess | str) -> KafkaAccess:
        """``servers`` as it is, or an unsecured access to ``host:port[,host:port]``."""
        return servers if isinstance(servers, KafkaAccess) else cls(servers)

    @classmethod
    def from_settings(
        cls,
        bootstrap_servers: str,
        security: SecurityConfig,
        env: Mapping[str, str] | None = None,
    ) -> KafkaAccess:
        """ConfigError naming the key when a variable it names is unset or a file
        cannot be used."""
        env = os.environ if env is None else env
        password = None
        if security.protocol in SASL_PROTOCOLS:
            password = _from_env(env, security.password_env, "password_env")
        context = None
        if security.protocol in TLS_PROTOCOLS:
            key_password = None
            if security.key_password_env is not None:
                key_password = _from_env(env, security.key_password_env, "key_password_env")
            context = tls_context(security, key_password)
        return cls(
            bootstrap_servers,
            security.protocol,
            security.sasl_mechanism if password is not None else None,
            security.username if password is not None else None,
            password,
            context,
        )

    def __str__(self) -> str:
        return self.bootstrap_servers

    def client_kwargs(self) -> dict[str, Any]:
        """The connection arguments of AIOKafkaProducer, AIOKafkaConsumer,
        AIOKafkaAdminClient and AIOKafkaClient."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.password is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` (None: plaintext). Faust passes them to the
        aiokafka clients of its consumer, producer and topic creation."""
        import faust

        if self.password is not None:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context,  # None: SASL_PLAINTEXT
                mechanism=self.sasl_mechanism,
            )
        if self.ssl_context is not None:
            return faust.SSLCredentials(self.ssl_context)
        return None

    async def check(self, timeout: float = CHECK_TIMEOUT_S) -> None:
        """Connect to the first broker that answers and ask it for metadata; BrokerError
        with one line naming the cause when the broker refused the connection's security
        (authentication failed, certificate not trusted, TLS expected or not spoken). A
        broker that cannot be reached at all passes: callers retry or report that."""
        problem = await self.security_problem(timeout)
        if problem is not None:
            raise BrokerError(problem)

    async def security_problem(self, timeout: float = CHECK_TIMEOUT_S) -> str | None:
        """What ``check`` would raise, or None."""
        for server in self.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                await asyncio.wait_for(self._ask(host, int(port)), timeout)
                return None
            except TimeoutError:
                return self._explain(TimeoutError(f"no answer within {timeout:.0f} s"))
            except ConnectionRefusedError:
                continue  # not running (yet): not a security problem
            except (OSError, KafkaError) as exc:
                found = self._explain(exc)
                if found is not None:
                    return found
        return None

    async def _ask(self, host: str, port: int) -> None:
        kwargs = self.client_kwargs()
        del kwargs["bootstrap_servers"]
        conn = await create_conn(
            host, port, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000), **kwargs
        )
        try:
            await conn.send(MetadataRequest([]))
        finally:
            conn.close()

    def _explain(self, exc: BaseException) -> str | None:
        where = f"the broker at {self.bootstrap_servers}"
        text = str(exc)
        for cause in _chain(exc):
            if isinstance(cause, ssl.SSLCertVerificationError):
                return (
                    f"{where}: its TLS certificate is not trusted ({cause.verify_message});"
                    " set broker.security.ca_file to the CA that signed it"
                    + (
                        ", or check the host names in broker.url"
                        if "match" in (cause.verify_message or "")
                        else ""
                    )
                )
            if isinstance(cause, ssl.SSLError):
                return (
                    f"{where}: the TLS handshake failed ({cause.reason or cause}); does its"
                    " listener speak TLS? (broker.security.protocol)"
                )
        if "authentication" in text.lower() or "SaslAuthenticationFailed" in type(exc).__name__:
            return (
                f"{where}: authentication failed for user {self.username!r}"
                f" ({self.sasl_mechanism}); check broker.security.username, the password in"
                " the variable broker.security.password_env names, and the mechanism"
            )
        protocol = f"broker.security.protocol is {self.security_protocol}"
        if isinstance(exc, UnsupportedSaslMechanismError):
            return (
                f"{where}: its listener does not take SASL mechanism {self.sasl_mechanism}"
                f" (broker.security.sasl_mechanism): it takes another, or no SASL ({protocol})"
            )
        if isinstance(exc, ConnectionResetError) and self.security_protocol in TLS_PROTOCOLS:
            # Kafka closes a plain-text connection on the first bytes of a TLS handshake
            return (
                f"{where} closed the connection during the TLS handshake: its listener likely"
                f" speaks plain text, and {protocol}"
            )
        if isinstance(exc, TimeoutError) and self.security_protocol in TLS_PROTOCOLS:
            return (
                f"{where} did not complete a TLS handshake ({exc}): its listener likely"
                f" speaks plain text (or the host drops the connection), and {protocol}"
            )
        if isinstance(exc, TimeoutError) and self.security_protocol != "PLAINTEXT":
            return f"{where} did not answer ({exc}): check {protocol}"
        if self.security_protocol not in TLS_PROTOCOLS and isinstance(exc, KafkaConnectionError):
            return (
                f"{where} closed the connection without answering: its listener likely"
                f" expects TLS or SASL, and {protocol}"
            )
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _from_env(env: Mapping[str, str], name: str | None, key: str) -> str:
    value = env.get(name) if name else None
    if not value:
        raise ConfigError(
            f"broker.security.{key}: the environment variable {name} is not set (or empty);"
            " it must hold the password"
        )
    return value


def tls_context(security: SecurityConfig, key_password: str | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (else the system's CAs), presenting
    ``cert_file`` when set, checking the broker's host name unless told not to."""
    key = "ca_file"
    try:
        context = ssl.create_default_context(
            cafile=str(security.ca_file) if security.ca_file else None
        )
        if security.cert_file is not None:
            key = "cert_file"
            context.load_cert_chain(
                security.cert_file,
                security.key_file,
                password=key_password,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker.security.{key}: cannot be used: {exc}") from None
    context.check_hostname = security.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@functools.lru_cache(maxsize=8)
def _cached(servers: str, security: SecurityConfig, password: str | None) -> KafkaAccess:
    del password  # part of the key only: a changed variable builds a new access
    return KafkaAccess.from_settings(servers, security)


def kafka_access(config: Config, env: Mapping[str, str] | None = None) -> KafkaAccess:
    """The access ``config`` describes, built once per process (the TLS context is
    costly); ``env`` other than the process's builds a fresh one."""
    security = config.broker.security
    if env is not None and env is not os.environ:
        return KafkaAccess.from_settings(config.bootstrap_servers, security, env)
    password = os.environ.get(security.password_env) if security.password_env else None
    return _cached(config.bootstrap_servers, security, password)
