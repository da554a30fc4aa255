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
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import secrets
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from wacrm.core.secret import Secret

Profile = Literal["dev", "prod", "tool"]

GRAPH_API_DEFAULT = "https://graph.facebook.com"
LLM_MODEL_DEFAULT = "gpt-4o-mini"

DATABASE_POOLERS = ("none", "transaction")
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
    whatsapp_app_secret: str
    whatsapp_verify_token: str
    whatsapp_access_token: str
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


def _str(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


N = TypeVar("N", int, float)


def _bounded(kind: Callable[[str], N], lo: N, hi: N) -> Callable[[str], N]:
    """A parser of ``kind`` (int, float) that accepts ``lo`` to ``hi`` inclusive."""
    def parse(raw: str) -> N:
        value = kind(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _int(lo: int, hi: int) -> Callable[[str], int]:
    return _bounded(int, lo, hi)


def _float(lo: float, hi: float) -> Callable[[str], float]:
    return _bounded(float, lo, hi)


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("must be a postgresql:// URL")
    return raw


def _pooler(raw: str) -> str:
    value = raw.strip().lower()
    if value not in DATABASE_POOLERS:
        raise ValueError("must be none (DATABASE_URL reaches PostgreSQL, or a session-mode pooler) or transaction "
                         "(a transaction-mode pooler: PgBouncer pool_mode=transaction, Supabase's or Neon's pooled "
                         "URL, RDS Proxy)")
    return value


def _bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server.strip()!r} is not host:port")
    return raw


def _region(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("must be a two-letter region code such as US or DE")
    return raw.upper()


def _fernet_key(raw: str) -> str:
    # what cryptography's Fernet accepts (storage.numbers encrypts the tokens with it)
    try:
        decoded = base64.urlsafe_b64decode(raw.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        decoded = b""
    if len(decoded) != 32:
        raise ValueError("must be 32 random bytes in url-safe base64 (a Fernet key; `wacrm dev` makes one, or: "
                         "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')")
    return raw


def _version(raw: str) -> str:
    if not raw.startswith("v"):
        raise ValueError("must look like v25.0")
    return raw


def _ambiguous_policy(raw: str) -> str:
    policy = raw.lower()
    if policy not in {"task", "resend"}:
        raise ValueError("must be task (a person checks an unsettled send) or resend (send it again once)")
    return policy


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("must be text (one readable line per event) or json (one JSON object per line)")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _cafile(raw: str) -> str:
    if not os.path.isfile(raw):
        raise ValueError("no such file (a PEM bundle of the CA certificates that signed the brokers')")
    try:
        ssl.create_default_context(cafile=raw)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot be read as PEM CA certificates ({exc})") from None
    return raw


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


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for o in origins:
        if not o.startswith(("http://", "https://")):
            raise ValueError(f"{o!r} is not an origin such as https://inbox.example.com")
    return origins


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def load(env: Mapping[str, str], profile: Profile = "prod", *, needs: frozenset[str] = frozenset()) -> Settings:
    """Build :class:`Settings` from ``env``; raise :class:`SettingsError` listing every problem.

    ``needs`` names variables this process cannot run without (``prod`` profile only);
    in the ``dev`` profile, secrets are generated instead.
    """
    problems: list[str] = []

    def get(name: str, parse: Callable[[str], Any], default: Any) -> Any:
        raw = _str(env, name)
        if raw is None:
            if profile == "prod" and name in needs and default is None:
                problems.append(f"{name}: required by this command and not set")
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            got = f"{len(raw)} characters" if name in UNECHOED else repr(raw)
            problems.append(f"{name}: {exc} (got {got})")
            return default

    generated = profile != "prod"

    def secret(name: str, dev_default: str) -> str:
        value = get(name, str, dev_default if generated else None)
        return value if value is not None else ""

    database_url = get("DATABASE_URL", _database_url, None)
    direct_url = get("DIRECT_URL", _database_url, None)
    settings = Settings(
        database_url=database_url,
        direct_url=direct_url or database_url,
        database_pooler=get("DATABASE_POOLER", _pooler, "none"),
        kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", _bootstrap, None),
        whatsapp_app_secret=secret("WHATSAPP_APP_SECRET", secrets.token_hex(16)),
        whatsapp_verify_token=secret("WHATSAPP_VERIFY_TOKEN", secrets.token_urlsafe(12)),
        whatsapp_access_token=secret("WHATSAPP_ACCESS_TOKEN", "dev-access-token"),
        whatsapp_phone_number_id=get("WHATSAPP_PHONE_NUMBER_ID", str, "200000000000001"),
        whatsapp_business_account_id=get("WHATSAPP_BUSINESS_ACCOUNT_ID", str, None),
        token_encryption_key=get("TOKEN_ENCRYPTION_KEY", _fernet_key, None),
        whatsapp_api_base_url=get("WHATSAPP_API_BASE_URL", _url, GRAPH_API_DEFAULT),
        whatsapp_api_version=get("WHATSAPP_API_VERSION", _version, "v25.0"),
        port=get("PORT", _int(1, 65535), 8080),
        host=get("HOST", str, "127.0.0.1" if generated else "0.0.0.0"),
        default_phone_region=get("DEFAULT_PHONE_REGION", _region, None),
        llm_api_base_url=get("LLM_API_BASE_URL", _url, None),
        llm_api_key=get("LLM_API_KEY", Secret, None),
        llm_model=get("LLM_MODEL", str, LLM_MODEL_DEFAULT),
        topic_partitions=get("TOPIC_PARTITIONS", _int(1, 1024), 4),
        topic_replication_factor=get("TOPIC_REPLICATION_FACTOR", _int(1, 16), 1),
        kafka_group_id=get("KAFKA_GROUP_ID", str, "wacrm"),
        broker_session_timeout_s=get("BROKER_SESSION_TIMEOUT", _float(3, 300), 8.0),
        consumer_fetch_wait_ms=get("CONSUMER_FETCH_WAIT_MS", _int(1, 5000), 30),
        consumer_fetch_min_bytes=get("CONSUMER_FETCH_MIN_BYTES", _int(1, 64 * 1024 * 1024), 16384),
        batch_size=get("BATCH_SIZE", _int(1, 10000), 200),
        batch_wait_ms=get("BATCH_WAIT_MS", _int(1, 1000), 20),
        batch_lanes=get("BATCH_LANES", _int(1, 32), 4),
        kafka_security_protocol=get("KAFKA_SECURITY_PROTOCOL", _choice(KAFKA_PROTOCOLS), "PLAINTEXT"),
        kafka_sasl_mechanism=get("KAFKA_SASL_MECHANISM", _choice(KAFKA_SASL_MECHANISMS), None),
        kafka_sasl_username=get("KAFKA_SASL_USERNAME", str, None),
        kafka_sasl_password=get("KAFKA_SASL_PASSWORD", str, None),
        kafka_ssl_cafile=get("KAFKA_SSL_CAFILE", _cafile, None),
        # A storm of dead letters stops the worker instead of draining a topic into wa.dlq.
        dlq_limit_consecutive=get("DLQ_LIMIT_CONSECUTIVE", _int(1, 1_000_000), 100),
        dlq_limit_ratio=get("DLQ_LIMIT_RATIO", _float(0.01, 1.0), 0.5),
        dlq_limit_window=get("DLQ_LIMIT_WINDOW", _int(10, 1_000_000), 1000),
        stop_grace_s=get("STOP_GRACE_SECONDS", _float(0, 300), 10.0),
        webhook_max_body_bytes=get("WEBHOOK_MAX_BODY_BYTES", _int(1024, 64 * 1024 * 1024), 4 * 1024 * 1024),
        webhook_body_timeout_s=get("WEBHOOK_BODY_TIMEOUT_SECONDS", _float(0.1, 300), 10.0),
        webhook_max_unverified_bodies=get("WEBHOOK_MAX_UNVERIFIED_BODIES", _int(1, 10000), 64),
        publish_timeout_s=get("PUBLISH_TIMEOUT_SECONDS", _float(0.1, 60), 5.0),
        worker_metrics_port=get("WORKER_METRICS_PORT", _int(0, 65535), 9100),
        graph_timeout_s=get("GRAPH_TIMEOUT_SECONDS", _float(0.1, 120), 10.0),
        db_timeout_s=get("DB_TIMEOUT_SECONDS", _float(0.1, 120), 10.0),
        log_level=get("LOG_LEVEL", _log_level, "INFO"),
        log_format=get("LOG_FORMAT", _log_format, "text"),
        rules_file=get("RULES_FILE", str, None),
        burst_window_s=get("BURST_WINDOW_SECONDS", _float(0, 60), 2.0),
        send_attempts=get("SEND_ATTEMPTS", _int(1, 10), 5),
        retry_base_s=get("RETRY_BASE_SECONDS", _float(0.05, 3600), 15.0),
        retry_multiplier=get("RETRY_MULTIPLIER", _float(1, 10), 3.0),
        rate_limit_per_s=get("RATE_LIMIT_PER_SECOND", _float(1, 1000), 80.0),
        pair_interval_s=get("PAIR_INTERVAL_SECONDS", _float(0, 600), 6.0),
        pair_burst=get("PAIR_BURST", _int(1, 100), 3),
        pause_s=get("PAUSE_SECONDS", _float(1, 86400), 900.0),
        ambiguous_settle_s=get("AMBIGUOUS_SETTLE_SECONDS", _float(0.1, 7 * 86400), 600.0),
        ambiguous_policy=get("AMBIGUOUS_POLICY", _ambiguous_policy, "task"),
        session_idle_s=get("SESSION_IDLE_SECONDS", _float(60, 30 * 86400), 8 * 3600.0),
        session_max_s=get("SESSION_MAX_SECONDS", _float(60, 365 * 86400), 7 * 86400.0),
        login_failures_per_account=get("LOGIN_FAILURES_PER_ACCOUNT", _int(1, 1000), 5),
        login_failures_per_address=get("LOGIN_FAILURES_PER_ADDRESS", _int(1, 10000), 20),
        inbox_origins=get("INBOX_ORIGINS", _origins, ()),
        intelligence_every=get("INTELLIGENCE_EVERY_MESSAGES", _int(0, 10000), 10),
        intelligence_timeout_s=get("INTELLIGENCE_TIMEOUT_SECONDS", _float(0.5, 120), 15.0),
        template_sync_s=get("TEMPLATE_SYNC_SECONDS", _float(10, 7 * 86400), 3600.0),
        media_dir=get("MEDIA_DIR", str, "media"),
        media_s3_bucket=get("MEDIA_S3_BUCKET", str, None),
        media_s3_endpoint_url=get("MEDIA_S3_ENDPOINT_URL", _url, None),
        media_s3_region=get("AWS_REGION", str, None) or get("AWS_DEFAULT_REGION", str, None),
        media_retention_days=get("MEDIA_RETENTION_DAYS", _int(1, 36500), None),
    )
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
