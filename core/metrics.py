"""The metric catalogue: every Prometheus metric wacrm exports, in one place.

Names carry unit suffixes; labels are small closed sets (outcome, agent, topic) — never a
phone number or a message id.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)

WEBHOOK_REQUESTS = Counter(
    "wacrm_webhook_requests_total", "Webhook requests by outcome", ["outcome"])
WEBHOOK_DURATION = Histogram(
    "wacrm_webhook_request_duration_seconds", "Time to answer a webhook request", ["outcome"], buckets=_FAST)
PUBLISH_DURATION = Histogram(
    "wacrm_publish_duration_seconds", "Time for the broker to acknowledge a produce (acks=all)", ["topic"],
    buckets=_FAST)
EVENTS = Counter(
    "wacrm_events_total", "Events handled by each agent, by outcome", ["agent", "outcome"])
BATCH_DURATION = Histogram(
    "wacrm_batch_duration_seconds", "Time an agent spent on one batch of events", ["agent"], buckets=_FAST)
BATCH_SIZE = Histogram(
    "wacrm_batch_size", "Events an agent handled together (one transaction, one wait for the broker)", ["agent"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
DUPLICATES = Counter(
    "wacrm_duplicates_total", "Redelivered items recognised and dropped", ["kind"])
PARSE_PROBLEMS = Counter(
    "wacrm_parse_problems_total", "Webhook items that could not be understood (sent to the DLQ), by where they were",
    ["part"])
IGNORED_SHAPES = Counter(
    "wacrm_ignored_shapes_total", "Webhook objects or fields we acknowledge but do not process", ["kind"])
SENDS = Counter(
    "wacrm_sends_total", "Graph API send attempts by outcome", ["outcome"])
SEND_DURATION = Histogram(
    "wacrm_send_duration_seconds", "Graph API send call duration", ["outcome"], buckets=_FAST)
REPLY_LATENCY = Histogram(
    "wacrm_reply_latency_seconds",
    "From the customer's message timestamp (Meta, 1 s resolution) to the reply accepted by the Graph API",
    buckets=_SLOW)
PIPELINE_LATENCY = Histogram(
    "wacrm_pipeline_latency_seconds",
    "From the webhook accepting the body to the reply accepted by the Graph API", buckets=_SLOW)
STATUSES = Counter(
    "wacrm_statuses_total", "Delivery statuses received, by state and whether they changed the message",
    ["status", "outcome"])
WORKER_PARTITIONS = Gauge(
    "wacrm_worker_assigned_partitions", "Partitions currently assigned to this worker (0 until it joined its group)")
UNKNOWN_NUMBER = Counter(
    "wacrm_webhook_unknown_number_total", "Webhook messages and statuses skipped: their business number is not "
    "configured (or is disabled)", ["kind"])
MESSAGES = Counter(
    "wacrm_inbound_messages_total", "Customer messages split out of webhooks, by type and business number "
    "(before dedupe)", ["type", "phone_number_id"])
ACCOUNT_ERRORS = Counter(
    "wacrm_account_errors_total", "value.errors items (system, app or account level) from Meta, by code", ["code"])
REPLIES = Counter(
    "wacrm_replies_total", "Reply decisions by engine (rules, llm, rules_fallback) and the rule that decided",
    ["engine", "rule"])
LLM_LATENCY = Histogram("wacrm_llm_latency_seconds", "LLM chat-completion call duration", buckets=_SLOW)
LLM_FALLBACKS = Counter("wacrm_llm_fallbacks_total", "LLM calls that failed; the rules answered", ["error"])
HANDOVERS = Counter("wacrm_handovers_total", "Conversations handed to a person", ["engine"])
SEND_ERRORS = Counter("wacrm_send_errors_total", "Graph API errors by Meta error code", ["code"])
RETRIES = Counter("wacrm_send_retries_total", "Sends scheduled for a retry, by retry number", ["attempt"])
DLQ_ENTRIES = Counter("wacrm_dlq_entries_total", "Dead letters written, by the agent that wrote them", ["agent"])
RATE_LIMIT_WAITS = Counter(
    "wacrm_rate_limit_waits_total", "Sends delayed by a rate limit (number: token bucket; recipient: pair pacing)",
    ["kind"])
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "wacrm_rate_limit_wait_seconds", "Time a send waited for the business number's token bucket", buckets=_FAST)
SEND_RECORDS = Counter(
    "wacrm_send_records_total", "Messages Meta took, recorded in the conversation, by outcome (recorded, already, "
    "second_copy; conflict: the provider message id belongs to another row and the message is NOT stored)",
    ["outcome"])
AMBIGUOUS_SENDS = Counter(
    "wacrm_ambiguous_sends_total", "Sends whose outcome was unknown, by step (marked: call unanswered; stuck: its "
    "worker died mid-call; settled_status, settled_answer: settled; task: a person checks; resend: sent again)",
    ["step"])
LEDGER_GUARD_MISSES = Counter(
    "wacrm_ledger_guard_misses_total", "Ledger state changes not made because the row had moved on (another worker, "
    "a status or the settle timer got there first), by the change", ["change"])
AGENT_STALLED = Gauge(
    "wacrm_agent_stalled_seconds",
    "How long each agent has been retrying the same batch in place (0 while it flows)", ["agent"])
AGENT_RETRIES = Counter(
    "wacrm_agent_retries_total", "Batches an agent retried in place after a transient failure", ["agent"])
AGENT_HALTS = Counter(
    "wacrm_agent_halts_total", "Times an agent stopped the worker (dead-letter storm, runner crash), by why",
    ["agent", "reason"])

CONSUMER_LAG = Gauge(
    "wacrm_consumer_lag", "Records not yet handled by the worker group, per input topic and partition (the log's "
    "end minus the committed offset); reliable=\"false\" where the end came from ListOffsets, which the embedded "
    "broker answers wrongly, instead of a fetched high-water mark", ["topic", "partition", "reliable"])
LAG_SAMPLES = Counter("wacrm_consumer_lag_samples_total", "Lag samples taken, by outcome", ["outcome"])
PAUSED_NUMBERS = Gauge(
    "wacrm_paused_numbers", "Business numbers whose sends are paused now (an account error from Meta)")
AWAITING_REPLY = Gauge(
    "wacrm_conversations_awaiting_reply", "Conversations whose customer waits for the bot: bot-owned, not opted out, "
    "written to inside the 24-hour window, with messages not yet answered or a reply not yet sent "
    "(storage.replies.awaiting_reply)", multiprocess_mode="max")
MESSAGES_STORED = Counter(
    "wacrm_messages_stored_total", "Customer messages stored (new ones, after dedupe), by whether the bot answers "
    "their type (expects_reply=\"false\": reactions, system messages ...)", ["expects_reply"])
WORKER_HEARTBEAT = Gauge(
    "wacrm_worker_heartbeat_timestamp_seconds", "When the worker's event loop last beat (Unix time); it beats every "
    "few seconds, so an old value on a worker that answers scrapes means its loop is stuck", multiprocess_mode="max")
AMBIGUOUS_OPEN = Gauge(
    "wacrm_ambiguous_unsettled", "Sends Meta may or may not have taken that no status has settled yet, and their "
    "oldest age in seconds", ["measure"])

# media (agents.media)
MEDIA_DOWNLOADS = Counter(
    "wacrm_media_downloads_total", "Media download attempts by outcome (stored, deduplicated: the same file was "
    "kept already; failed, too_large, retry_scheduled, duplicate: done or in hand elsewhere)", ["outcome"])
MEDIA_BYTES = Counter("wacrm_media_bytes_total", "Bytes of media downloaded and kept")
MEDIA_DOWNLOAD_DURATION = Histogram("wacrm_media_download_seconds", "From claim to outcome of one media download",
                                    buckets=_SLOW)
MEDIA_STORE_FAILURES = Counter("wacrm_media_store_failures_total", "Media store operations that failed (the "
                               "download waits and is retried)", ["store"])

# database
DB_POOL_WAIT = Histogram("wacrm_db_pool_wait_seconds", "Time waiting for a pooled database connection",
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
DB_STATEMENT = Histogram("wacrm_db_statement_seconds", "Database statement time, by the statement's first word",
                         ["verb"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                            2.5, 5))

# inbox
INBOX_REQUESTS = Counter("wacrm_inbox_requests_total", "Inbox API requests by route group and outcome",
                         ["route", "outcome"])
INBOX_DURATION = Histogram("wacrm_inbox_request_duration_seconds", "Inbox API request duration", ["route"])
INBOX_LOGINS = Counter("wacrm_inbox_logins_total", "Sign-in attempts by outcome", ["outcome"])
INBOX_SSE_STREAMS = Gauge("wacrm_inbox_sse_streams", "Open live-event streams", multiprocess_mode="livesum")
INBOX_INTELLIGENCE = Counter("wacrm_inbox_intelligence_total", "Intelligence refreshes by engine and trigger",
                             ["engine", "trigger"])


def exposition() -> bytes:
    """This process's metrics in the text format; under ``wacrm serve --processes N`` (the environment
    names a ``PROMETHEUS_MULTIPROC_DIR``) those of every process of the service, summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
