"""One immutable settings object, read once from the environment and validated.

Nothing else in wacrm reads ``os.environ``: commands call :func:`load` and pass the
result down. Every problem is reported at once, each message naming the variable and
what is wrong with it (:class:`SettingsError`).

Profiles: ``dev`` (``wacrm dev``, the tests) makes every variable optional and fills
the secrets with generated values; ``prod`` (``serve``, ``worker``) requires the
secrets the process needs.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Profile = Literal["dev", "prod", "tool"]

GRAPH_API_DEFAULT = "https://graph.facebook.com"


class SettingsError(Exception):
    """The environment is invalid; ``problems`` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every wacrm process. See the README's configuration table."""

    database_url: str | None
    kafka_bootstrap_servers: str | None
    whatsapp_app_secret: str
    whatsapp_verify_token: str
    whatsapp_access_token: str
    whatsapp_phone_number_id: str
    whatsapp_api_base_url: str
    whatsapp_api_version: str
    port: int
    host: str
    default_phone_region: str | None
    llm_api_base_url: str | None
    llm_api_key: str | None
    llm_model: str | None
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
    dlq_limit_consecutive: int
    dlq_limit_ratio: float
    dlq_limit_window: int
    stop_grace_s: float
    # webhook
    webhook_max_body_bytes: int
    publish_timeout_s: float
    # worker
    worker_metrics_port: int
    graph_timeout_s: float
    db_timeout_s: float
    log_level: str
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

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def retry_delays(self) -> list[float]:
        """Seconds before each retry: base, base×m, base×m², … (``send_attempts`` − 1 of them)."""
        return [self.retry_base_s * self.retry_multiplier ** i for i in range(self.send_attempts - 1)]

    @property
    def graph_messages_url_base(self) -> str:
        return f"{self.whatsapp_api_base_url.rstrip('/')}/{self.whatsapp_api_version}"


def _str(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("must be a postgresql:// URL")
    return raw


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


def _version(raw: str) -> str:
    if not raw.startswith("v"):
        raise ValueError("must look like v25.0")
    return raw


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
            problems.append(f"{name}: {exc} (got {raw!r})")
            return default

    generated = profile != "prod"

    def secret(name: str, dev_default: str) -> str:
        value = get(name, str, dev_default if generated else None)
        return value if value is not None else ""

    settings = Settings(
        database_url=get("DATABASE_URL", _database_url, None),
        kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", _bootstrap, None),
        whatsapp_app_secret=secret("WHATSAPP_APP_SECRET", secrets.token_hex(16)),
        whatsapp_verify_token=secret("WHATSAPP_VERIFY_TOKEN", secrets.token_urlsafe(12)),
        whatsapp_access_token=secret("WHATSAPP_ACCESS_TOKEN", "dev-access-token"),
        whatsapp_phone_number_id=get("WHATSAPP_PHONE_NUMBER_ID", str, "200000000000001"),
        whatsapp_api_base_url=get("WHATSAPP_API_BASE_URL", _url, GRAPH_API_DEFAULT),
        whatsapp_api_version=get("WHATSAPP_API_VERSION", _version, "v25.0"),
        port=get("PORT", _int(1, 65535), 8080),
        host=get("HOST", str, "127.0.0.1" if generated else "0.0.0.0"),
        default_phone_region=get("DEFAULT_PHONE_REGION", _region, None),
        llm_api_base_url=get("LLM_API_BASE_URL", _url, None),
        llm_api_key=get("LLM_API_KEY", str, None),
        llm_model=get("LLM_MODEL", str, None),
        topic_partitions=get("TOPIC_PARTITIONS", _int(1, 1024), 4),
        topic_replication_factor=get("TOPIC_REPLICATION_FACTOR", _int(1, 16), 1),
        kafka_group_id=get("KAFKA_GROUP_ID", str, "wacrm"),
        broker_session_timeout_s=get("BROKER_SESSION_TIMEOUT", _float(3, 300), 8.0),
        consumer_fetch_wait_ms=get("CONSUMER_FETCH_WAIT_MS", _int(1, 5000), 30),
        consumer_fetch_min_bytes=get("CONSUMER_FETCH_MIN_BYTES", _int(1, 64 * 1024 * 1024), 16384),
        batch_size=get("BATCH_SIZE", _int(1, 10000), 200),
        batch_wait_ms=get("BATCH_WAIT_MS", _int(1, 1000), 20),
        batch_lanes=get("BATCH_LANES", _int(1, 32), 4),
        # A storm of dead letters stops the worker instead of draining a topic into wa.dlq.
        dlq_limit_consecutive=get("DLQ_LIMIT_CONSECUTIVE", _int(1, 1_000_000), 100),
        dlq_limit_ratio=get("DLQ_LIMIT_RATIO", _float(0.01, 1.0), 0.5),
        dlq_limit_window=get("DLQ_LIMIT_WINDOW", _int(10, 1_000_000), 1000),
        stop_grace_s=get("STOP_GRACE_SECONDS", _float(0, 300), 10.0),
        webhook_max_body_bytes=get("WEBHOOK_MAX_BODY_BYTES", _int(1024, 64 * 1024 * 1024), 4 * 1024 * 1024),
        publish_timeout_s=get("PUBLISH_TIMEOUT_SECONDS", _float(0.1, 60), 5.0),
        worker_metrics_port=get("WORKER_METRICS_PORT", _int(0, 65535), 9100),
        graph_timeout_s=get("GRAPH_TIMEOUT_SECONDS", _float(0.1, 120), 10.0),
        db_timeout_s=get("DB_TIMEOUT_SECONDS", _float(0.1, 120), 10.0),
        log_level=get("LOG_LEVEL", _log_level, "INFO"),
        rules_file=get("RULES_FILE", str, None),
        burst_window_s=get("BURST_WINDOW_SECONDS", _float(0, 60), 2.0),
        send_attempts=get("SEND_ATTEMPTS", _int(1, 10), 5),
        retry_base_s=get("RETRY_BASE_SECONDS", _float(0.05, 3600), 15.0),
        retry_multiplier=get("RETRY_MULTIPLIER", _float(1, 10), 3.0),
        rate_limit_per_s=get("RATE_LIMIT_PER_SECOND", _float(1, 1000), 80.0),
        pair_interval_s=get("PAIR_INTERVAL_SECONDS", _float(0, 600), 6.0),
        pair_burst=get("PAIR_BURST", _int(1, 100), 3),
        pause_s=get("PAUSE_SECONDS", _float(1, 86400), 900.0),
    )
    if problems:
        raise SettingsError(problems)
    return settings
