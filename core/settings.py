"""One immutable settings object, read once from the environment and validated.

Nothing else in wacrm reads ``os.environ``: commands call :func:`load` and pass the
result down. Every problem is reported at once, each message naming the variable and
what is wrong with it (:class:`SettingsError`).

Profiles: ``dev`` (``wacrm dev``, the tests) makes every variable optional and fills
the secrets with generated values; ``prod`` (``serve``, ``worker``) requires the
secrets the process needs, refuses secrets shorter than :data:`MIN_SECRET_LENGTH` and a
Graph API base URL over plain ``http://`` (except to a loopback host: a local stand-in).

Kafka security (every profile): ``KAFKA_SECURITY_PROTOCOL`` and its companions are checked
together, and :meth:`Settings.kafka_security_kwargs` is the one place that turns them into
client arguments (the webhook's producer, the CLI's admin client; the worker's faust
credentials are built from the same fields and context).

Rules with their one home here: :attr:`Settings.llm` ("is an LLM configured?") and
:func:`is_loopback`. Single values are parsed by :mod:`core.parsers`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from wacrm.core import parsers as parse
from wacrm.core.secret import Secret

Profile = Literal["dev", "prod", "tool"]

GRAPH_API_DEFAULT = "https://graph.facebook.com"
LLM_MODEL_DEFAULT = "gpt-4o-mini"

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# A secret whose value a problem never repeats (the others are validated only for their length).
UNECHOED = frozenset({"TOKEN_ENCRYPTION_KEY"})
# Production refuses shorter secrets. Meta's app secrets are 32 hex digits and access tokens
# far longer; the verify token is the operator's own choice.
MIN_SECRET_LENGTH = {"WHATSAPP_APP_SECRET": 16, "WHATSAPP_ACCESS_TOKEN": 16, "WHATSAPP_VERIFY_TOKEN": 12}


class SettingsError(Exception):
    """The environment is invalid; ``problems`` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class LlmEndpoint:
    """An OpenAI-compatible chat-completions endpoint: what the worker's replies and the inbox's
    intelligence call (:attr:`Settings.llm`)."""

    base_url: str
    api_key: Secret | None
    model: str


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every wacrm process. See the README's configuration table."""

    database_url: str | None
    # DIRECT_URL (default DATABASE_URL): what needs a session of its own (migrations and their advisory
    # lock, the inbox's LISTEN, the CLI's one-off connections); DATABASE_URL may be a transaction pooler.
    direct_url: str | None
    database_pooler: str  # none | transaction (DATABASE_POOLER; storage.db turns off the statement cache)
    kafka_bootstrap_servers: str | None
    # secrets: never in a repr (a settings object in a log line or a traceback shows no secret)
    whatsapp_app_secret: str = dataclasses.field(repr=False)
    whatsapp_verify_token: str = dataclasses.field(repr=False)
    whatsapp_access_token: str = dataclasses.field(repr=False)
    whatsapp_phone_number_id: str
    whatsapp_business_account_id: str | None
    # business numbers' tokens are stored encrypted with it (storage.numbers); None: none can be stored
    token_encryption_key: str | None = dataclasses.field(repr=False)
    whatsapp_api_base_url: str
    whatsapp_api_version: str
    port: int
    host: str
    default_phone_region: str | None
    llm_api_base_url: str | None  # set: an LLM is configured (:attr:`llm`)
    llm_api_key: Secret | None  # shown masked (core.secret)
    llm_model: str
    # bus
    topic_partitions: int
    topic_replication_factor: int
    kafka_group_id: str
    broker_session_timeout_s: float
    consumer_fetch_wait_ms: int
    consumer_fetch_min_bytes: int
    batch_size: int
    batch_wait_ms: int
    batch_lanes: int
    # kafka security (validated together in load(); turned into client arguments in one place)
    kafka_security_protocol: str
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None = dataclasses.field(repr=False)
    kafka_ssl_cafile: str | None
    dlq_limit_consecutive: int
    dlq_limit_ratio: float
    dlq_limit_window: int
    stop_grace_s: float
    # webhook
    webhook_max_body_bytes: int
    webhook_body_timeout_s: float
    webhook_max_unverified_bodies: int
    publish_timeout_s: float
    # worker
    worker_metrics_port: int
    graph_timeout_s: float
    db_timeout_s: float
    log_level: str
    log_format: str  # text | json (core.logs)
    # replies
    rules_file: str | None
    burst_window_s: float
    send_attempts: int
    retry_base_s: float
    retry_multiplier: float
    rate_limit_per_s: float
    pair_interval_s: float
    pair_burst: int
    pause_s: float
    # ambiguous sends
    ambiguous_settle_s: float
    ambiguous_policy: str
    # inbox
    session_idle_s: float
    session_max_s: float
    login_failures_per_account: int
    login_failures_per_address: int
    inbox_origins: tuple[str, ...]
    intelligence_every: int
    intelligence_timeout_s: float
    template_sync_s: float  # the template catalogue is synced with Meta this often (inbox/catalogue.py)
    # media (MEDIA_S3_BUCKET set: the bucket; else the directory)
    media_dir: str
    media_s3_bucket: str | None
    media_s3_endpoint_url: str | None
    media_s3_region: str | None
    media_retention_days: int | None  # None: kept forever

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def retry_delays(self) -> list[float]:
        """Seconds before each retry: base, base×m, base×m², … (``send_attempts`` − 1 of them)."""
        return [self.retry_base_s * self.retry_multiplier ** i for i in range(self.send_attempts - 1)]

    @property
    def database_pooled(self) -> bool:
        """``DATABASE_URL`` reaches PostgreSQL through a transaction-mode pooler (no named prepared statements)."""
        return self.database_pooler == "transaction"

    @property
    def direct_variable(self) -> str:
        """The variable ``direct_url`` came from, for messages."""
        return "DIRECT_URL" if self.direct_url != self.database_url else "DATABASE_URL"

    @property
    def llm(self) -> LlmEndpoint | None:
        """The LLM that writes the replies and the inbox's intelligence, or None: the rules do.

        The one rule for "is an LLM configured?": ``LLM_API_BASE_URL`` is set (``LLM_MODEL`` has
        a default, :data:`LLM_MODEL_DEFAULT`; ``LLM_API_KEY`` is optional, a local server needs none)."""
        if self.llm_api_base_url is None:
            return None
        return LlmEndpoint(self.llm_api_base_url, self.llm_api_key, self.llm_model)

    @property
    def graph_messages_url_base(self) -> str:
        return f"{self.whatsapp_api_base_url.rstrip('/')}/{self.whatsapp_api_version}"

    @property
    def kafka_uses_ssl(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (the system's CAs, or ``KAFKA_SSL_CAFILE``) when the protocol uses TLS."""
        return ssl.create_default_context(cafile=self.kafka_ssl_cafile) if self.kafka_uses_ssl else None

    def kafka_security_kwargs(self) -> dict[str, Any]:
        """aiokafka client arguments (producer, consumer, admin) for ``KAFKA_SECURITY_PROTOCOL``."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_uses_ssl:
            kwargs["ssl_context"] = self.kafka_ssl_context()
        if self.kafka_uses_sasl:
            kwargs.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password)
        return kwargs

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """:meth:`kafka_security_kwargs` with ``bootstrap_servers``: all an aiokafka client needs to connect."""
        assert self.kafka_bootstrap_servers is not None
        return {"bootstrap_servers": self.kafka_bootstrap_servers, **self.kafka_security_kwargs()}


def is_loopback(netloc: str) -> bool:
    """Whether a URL's network location or a Host header ("127.0.0.1:8080", "[::1]", "localhost")
    names this machine."""
    try:
        name = urllib.parse.urlsplit(f"//{netloc}").hostname or ""
    except ValueError:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _kafka_security_problems(s: Settings) -> list[str]:
    """The Kafka security variables checked together (each alone was parsed already)."""
    problems = []
    protocol = f"KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}"
    sasl = {"KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism, "KAFKA_SASL_USERNAME": s.kafka_sasl_username,
            "KAFKA_SASL_PASSWORD": s.kafka_sasl_password}
    for name, value in sasl.items():
        if s.kafka_uses_sasl and value is None:
            hint = f" (one of {', '.join(KAFKA_SASL_MECHANISMS)})" if name == "KAFKA_SASL_MECHANISM" else ""
            problems.append(f"{name}: required with {protocol}{hint}")
        elif not s.kafka_uses_sasl and value is not None:
            problems.append(f"{name}: set, but {protocol} does not use SASL (use SASL_SSL or SASL_PLAINTEXT)")
    if s.kafka_ssl_cafile is not None and not s.kafka_uses_ssl:
        problems.append(f"KAFKA_SSL_CAFILE: set, but {protocol} does not use TLS (use SSL or SASL_SSL)")
    return problems


def _pooler_problems(s: Settings, direct_given: bool, needs: frozenset[str]) -> list[str]:
    """A transaction pooler keeps no session: what needs one must reach PostgreSQL by ``DIRECT_URL``."""
    if s.database_pooled and s.database_url is not None and not direct_given and "DATABASE_URL" in needs:
        return ["DIRECT_URL: required with DATABASE_POOLER=transaction: migrations (an advisory lock), the inbox's "
                "live events (LISTEN), the schema check at start and the command-line tools need a session, which a "
                "transaction pooler does not keep; set it to PostgreSQL itself (or to a session-mode pooler)"]
    return []


def _production_problems(s: Settings) -> list[str]:
    """What the ``prod`` profile refuses: plain HTTP to a remote Graph API, short secrets."""
    problems = []
    url = urllib.parse.urlsplit(s.whatsapp_api_base_url)
    if url.scheme != "https" and not is_loopback(url.netloc):
        problems.append(f"WHATSAPP_API_BASE_URL: must be https:// in production (plain http:// only to a loopback "
                        f"host such as 127.0.0.1, e.g. a local stand-in); got {s.whatsapp_api_base_url!r}")
    values = {"WHATSAPP_APP_SECRET": s.whatsapp_app_secret, "WHATSAPP_ACCESS_TOKEN": s.whatsapp_access_token,
              "WHATSAPP_VERIFY_TOKEN": s.whatsapp_verify_token}
    for name, value in values.items():
        if value and len(value) < MIN_SECRET_LENGTH[name]:  # unset ones are reported by `needs`, if needed
            problems.append(f"{name}: too short for production ({len(value)} characters, at least "
                            f"{MIN_SECRET_LENGTH[name]})")
    return problems


def _str(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, stripped; None when it is unset or blank."""
    value = env.get(name)
    return (value.strip() or None) if value is not None else None


class _Reader:
    """Reads variables from ``env`` for one profile, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str], profile: Profile, needs: frozenset[str]) -> None:
        self.env, self.profile, self.needs = env, profile, needs
        self.generated = profile != "prod"  # dev and tool: secrets are generated, not required
        self.problems: list[str] = []

    def get(self, name: str, kind: Callable[[str], Any], default: Any) -> Any:
        """``name`` parsed, or ``default`` when it is unset (a problem if this process needs it) or invalid."""
        raw = _str(self.env, name)
        if raw is None:
            if self.profile == "prod" and name in self.needs and default is None:
                self.problems.append(f"{name}: required by this command and not set")
            return default
        try:
            return kind(raw)
        except ValueError as exc:
            got = f"{len(raw)} characters" if name in UNECHOED else repr(raw)
            self.problems.append(f"{name}: {exc} (got {got})")
            return default

    def secret(self, name: str, dev_default: str) -> str:
        value = self.get(name, str, dev_default if self.generated else None)
        return value if value is not None else ""


def _whatsapp(r: _Reader) -> dict[str, Any]:
    return dict(
        whatsapp_app_secret=r.secret("WHATSAPP_APP_SECRET", secrets.token_hex(16)),
        whatsapp_verify_token=r.secret("WHATSAPP_VERIFY_TOKEN", secrets.token_urlsafe(12)),
        whatsapp_access_token=r.secret("WHATSAPP_ACCESS_TOKEN", "dev-access-token"),
        whatsapp_phone_number_id=r.get("WHATSAPP_PHONE_NUMBER_ID", str, "200000000000001"),
        whatsapp_business_account_id=r.get("WHATSAPP_BUSINESS_ACCOUNT_ID", str, None),
        token_encryption_key=r.get("TOKEN_ENCRYPTION_KEY", parse.fernet_key, None),
        whatsapp_api_base_url=r.get("WHATSAPP_API_BASE_URL", parse.url, GRAPH_API_DEFAULT),
        whatsapp_api_version=r.get("WHATSAPP_API_VERSION", parse.api_version, "v25.0"),
        port=r.get("PORT", parse.int_range(1, 65535), 8080),
        host=r.get("HOST", str, "127.0.0.1" if r.generated else "0.0.0.0"),
        default_phone_region=r.get("DEFAULT_PHONE_REGION", parse.region, None),
        llm_api_base_url=r.get("LLM_API_BASE_URL", parse.url, None),
        llm_api_key=r.get("LLM_API_KEY", Secret, None),
        llm_model=r.get("LLM_MODEL", str, LLM_MODEL_DEFAULT),
    )


def _bus(r: _Reader) -> dict[str, Any]:
    return dict(
        topic_partitions=r.get("TOPIC_PARTITIONS", parse.int_range(1, 1024), 4),
        topic_replication_factor=r.get("TOPIC_REPLICATION_FACTOR", parse.int_range(1, 16), 1),
        kafka_group_id=r.get("KAFKA_GROUP_ID", str, "wacrm"),
        broker_session_timeout_s=r.get("BROKER_SESSION_TIMEOUT", parse.float_range(3, 300), 8.0),
        consumer_fetch_wait_ms=r.get("CONSUMER_FETCH_WAIT_MS", parse.int_range(1, 5000), 30),
        consumer_fetch_min_bytes=r.get("CONSUMER_FETCH_MIN_BYTES", parse.int_range(1, 64 * 1024 * 1024), 16384),
        batch_size=r.get("BATCH_SIZE", parse.int_range(1, 10000), 200),
        batch_wait_ms=r.get("BATCH_WAIT_MS", parse.int_range(1, 1000), 20),
        batch_lanes=r.get("BATCH_LANES", parse.int_range(1, 32), 4),
        kafka_security_protocol=r.get("KAFKA_SECURITY_PROTOCOL", parse.choice(KAFKA_PROTOCOLS), "PLAINTEXT"),
        kafka_sasl_mechanism=r.get("KAFKA_SASL_MECHANISM", parse.choice(KAFKA_SASL_MECHANISMS), None),
        kafka_sasl_username=r.get("KAFKA_SASL_USERNAME", str, None),
        kafka_sasl_password=r.get("KAFKA_SASL_PASSWORD", str, None),
        kafka_ssl_cafile=r.get("KAFKA_SSL_CAFILE", parse.cafile, None),
        # A storm of dead letters stops the worker instead of draining a topic into wa.dlq.
        dlq_limit_consecutive=r.get("DLQ_LIMIT_CONSECUTIVE", parse.int_range(1, 1_000_000), 100),
        dlq_limit_ratio=r.get("DLQ_LIMIT_RATIO", parse.float_range(0.01, 1.0), 0.5),
        dlq_limit_window=r.get("DLQ_LIMIT_WINDOW", parse.int_range(10, 1_000_000), 1000),
        stop_grace_s=r.get("STOP_GRACE_SECONDS", parse.float_range(0, 300), 10.0),
    )


def _processes(r: _Reader) -> dict[str, Any]:
    """The webhook's and the worker's own settings."""
    return dict(
        webhook_max_body_bytes=r.get("WEBHOOK_MAX_BODY_BYTES", parse.int_range(1024, 64 * 1024 * 1024),
                                     4 * 1024 * 1024),
        webhook_body_timeout_s=r.get("WEBHOOK_BODY_TIMEOUT_SECONDS", parse.float_range(0.1, 300), 10.0),
        webhook_max_unverified_bodies=r.get("WEBHOOK_MAX_UNVERIFIED_BODIES", parse.int_range(1, 10000), 64),
        publish_timeout_s=r.get("PUBLISH_TIMEOUT_SECONDS", parse.float_range(0.1, 60), 5.0),
        worker_metrics_port=r.get("WORKER_METRICS_PORT", parse.int_range(0, 65535), 9100),
        graph_timeout_s=r.get("GRAPH_TIMEOUT_SECONDS", parse.float_range(0.1, 120), 10.0),
        db_timeout_s=r.get("DB_TIMEOUT_SECONDS", parse.float_range(0.1, 120), 10.0),
        log_level=r.get("LOG_LEVEL", parse.log_level, "INFO"),
        log_format=r.get("LOG_FORMAT", parse.log_format, "text"),
    )


def _replies(r: _Reader) -> dict[str, Any]:
    return dict(
        rules_file=r.get("RULES_FILE", str, None),
        burst_window_s=r.get("BURST_WINDOW_SECONDS", parse.float_range(0, 60), 2.0),
        send_attempts=r.get("SEND_ATTEMPTS", parse.int_range(1, 10), 5),
        retry_base_s=r.get("RETRY_BASE_SECONDS", parse.float_range(0.05, 3600), 15.0),
        retry_multiplier=r.get("RETRY_MULTIPLIER", parse.float_range(1, 10), 3.0),
        rate_limit_per_s=r.get("RATE_LIMIT_PER_SECOND", parse.float_range(1, 1000), 80.0),
        pair_interval_s=r.get("PAIR_INTERVAL_SECONDS", parse.float_range(0, 600), 6.0),
        pair_burst=r.get("PAIR_BURST", parse.int_range(1, 100), 3),
        pause_s=r.get("PAUSE_SECONDS", parse.float_range(1, 86400), 900.0),
        ambiguous_settle_s=r.get("AMBIGUOUS_SETTLE_SECONDS", parse.float_range(0.1, 7 * 86400), 600.0),
        ambiguous_policy=r.get("AMBIGUOUS_POLICY", parse.ambiguous_policy, "task"),
    )


def _inbox_and_media(r: _Reader) -> dict[str, Any]:
    return dict(
        session_idle_s=r.get("SESSION_IDLE_SECONDS", parse.float_range(60, 30 * 86400), 8 * 3600.0),
        session_max_s=r.get("SESSION_MAX_SECONDS", parse.float_range(60, 365 * 86400), 7 * 86400.0),
        login_failures_per_account=r.get("LOGIN_FAILURES_PER_ACCOUNT", parse.int_range(1, 1000), 5),
        login_failures_per_address=r.get("LOGIN_FAILURES_PER_ADDRESS", parse.int_range(1, 10000), 20),
        inbox_origins=r.get("INBOX_ORIGINS", parse.origins, ()),
        intelligence_every=r.get("INTELLIGENCE_EVERY_MESSAGES", parse.int_range(0, 10000), 10),
        intelligence_timeout_s=r.get("INTELLIGENCE_TIMEOUT_SECONDS", parse.float_range(0.5, 120), 15.0),
        template_sync_s=r.get("TEMPLATE_SYNC_SECONDS", parse.float_range(10, 7 * 86400), 3600.0),
        media_dir=r.get("MEDIA_DIR", str, "media"),
        media_s3_bucket=r.get("MEDIA_S3_BUCKET", str, None),
        media_s3_endpoint_url=r.get("MEDIA_S3_ENDPOINT_URL", parse.url, None),
        media_s3_region=r.get("AWS_REGION", str, None) or r.get("AWS_DEFAULT_REGION", str, None),
        media_retention_days=r.get("MEDIA_RETENTION_DAYS", parse.int_range(1, 36500), None),
    )


def load(env: Mapping[str, str], profile: Profile = "prod", *, needs: frozenset[str] = frozenset()) -> Settings:
    """Build :class:`Settings` from ``env``; raise :class:`SettingsError` listing every problem.

    ``needs`` names variables this process cannot run without (``prod`` profile only);
    in the ``dev`` profile, secrets are generated instead.
    """
    r = _Reader(env, profile, needs)
    database_url = r.get("DATABASE_URL", parse.database_url, None)
    direct_url = r.get("DIRECT_URL", parse.database_url, None)
    settings = Settings(
        database_url=database_url,
        direct_url=direct_url or database_url,
        database_pooler=r.get("DATABASE_POOLER", parse.pooler, "none"),
        kafka_bootstrap_servers=r.get("KAFKA_BOOTSTRAP_SERVERS", parse.bootstrap, None),
        **_whatsapp(r), **_bus(r), **_processes(r), **_replies(r), **_inbox_and_media(r),
    )
    problems = r.problems
    problems += _kafka_security_problems(settings)
    problems += _pooler_problems(settings, direct_url is not None, needs)
    if profile == "prod":
        problems += _production_problems(settings)
    if problems:
        raise SettingsError(problems)
    return settings


class Unset(SettingsError):
    """A variable a command cannot run without (in any profile) has no value; the message names it alone."""

    def __str__(self) -> str:
        return self.problems[0]


def environment() -> dict[str, str]:
    """The process environment (a copy): what a command's settings are loaded from (:func:`for_command`)."""
    return dict(os.environ)


def env_value(name: str) -> str | None:
    """A variable as :func:`load` reads it (None: unset or blank), for what a command takes beside its settings."""
    return _str(os.environ, name)


def for_command(env: Mapping[str, str], profile: Profile, needs: Iterable[str] = (), *,
                require: Iterable[str] = ()) -> Settings:
    """:func:`load`, then each of ``require`` (``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``) must have a value."""
    s = load(env, profile, needs=frozenset(needs))
    values = {"DATABASE_URL": s.database_url, "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers}
    for name in (n for n in require if values[n] is None):
        raise Unset([f"{name}: required by this command and not set"])
    return s
