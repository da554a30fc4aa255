"""The Grafana dashboards of wacrm, written as provisioned JSON (``python deploy/grafana/dashboards.py``).

One home for every panel and its query: the JSON files in ``dashboards/`` are generated from
``DASHBOARDS`` below, and ``tests/test_deploy.py`` checks they are up to date and that every
query returns data from a real Prometheus scraping a running system.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
Q = "histogram_quantile"

# (title, [(panel title, unit, [(legend, expr), …]), …]); every query is PromQL against the metrics
# of `wacrm serve` (webhook, inbox) and `wacrm worker`.
DASHBOARDS: dict[str, tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = {
    "wacrm-overview": ("wacrm: overview", [
        ("Webhook calls by outcome", "reqps", [
            ("{{outcome}}", "sum by (outcome) (rate(wacrm_webhook_requests_total[5m]))")]),
        ("Webhook latency", "s", [
            ("p50", f"{Q}(0.5, sum by (le) (rate(wacrm_webhook_request_duration_seconds_bucket[5m])))"),
            ("p99", f"{Q}(0.99, sum by (le) (rate(wacrm_webhook_request_duration_seconds_bucket[5m])))")]),
        ("Webhook errors (not accepted)", "reqps", [
            ("{{outcome}}", 'sum by (outcome) (rate(wacrm_webhook_requests_total{outcome!="accepted"}[5m]))')]),
        ("Customer reply latency (customer's timestamp to Meta accepting the reply)", "s", [
            ("p50", f"{Q}(0.5, sum by (le) (rate(wacrm_reply_latency_seconds_bucket[5m])))"),
            ("p99", f"{Q}(0.99, sum by (le) (rate(wacrm_reply_latency_seconds_bucket[5m])))")]),
        ("Sends by outcome", "ops", [("{{outcome}}", "sum by (outcome) (rate(wacrm_sends_total[5m]))")]),
        ("Replies by engine", "ops", [("{{engine}}", "sum by (engine) (rate(wacrm_replies_total[5m]))")]),
        ("Inbox API latency p99 by route", "s", [
            ("{{route}}", f"{Q}(0.99, sum by (le, route) (rate(wacrm_inbox_request_duration_seconds_bucket[5m])))")]),
    ]),
    "wacrm-bus": ("wacrm: the bus", [
        ("Consumer lag by topic and partition", "short", [
            ("{{topic}}/{{partition}} reliable={{reliable}}",
             "sum by (topic, partition, reliable) (wacrm_consumer_lag)")]),
        ("Batch time p99 by agent", "s", [
            ("{{agent}}", f"{Q}(0.99, sum by (le, agent) (rate(wacrm_batch_duration_seconds_bucket[5m])))")]),
        ("Events handled by agent and outcome", "ops", [
            ("{{agent}} {{outcome}}", "sum by (agent, outcome) (rate(wacrm_events_total[5m]))")]),
        ("Batch size p50 by agent", "short", [
            ("{{agent}}", f"{Q}(0.5, sum by (le, agent) (rate(wacrm_batch_size_bucket[5m])))")]),
        ("Agents retrying in place (seconds on the same batch)", "s", [
            ("{{agent}}", "max by (agent) (wacrm_agent_stalled_seconds)")]),
        ("Partitions held per worker", "short", [("{{instance}}", "wacrm_worker_assigned_partitions")]),
        ("Webhook publish time p99", "s", [
            ("p99", f"{Q}(0.99, sum by (le) (rate(wacrm_publish_duration_seconds_bucket[5m])))")]),
    ]),
    "wacrm-delivery": ("wacrm: delivery", [
        ("Sends by outcome", "ops", [("{{outcome}}", "sum by (outcome) (rate(wacrm_sends_total[5m]))")]),
        ("Retries scheduled by attempt", "ops", [
            ("attempt {{attempt}}", "sum by (attempt) (rate(wacrm_send_retries_total[5m]))")]),
        ("Graph API errors by code", "ops", [("{{code}}", "sum by (code) (rate(wacrm_send_errors_total[5m]))")]),
        ("Dead letters by agent (last hour)", "short", [
            ("{{agent}}", "sum by (agent) (increase(wacrm_dlq_entries_total[1h]))")]),
        ("Sends left unsettled (Meta may have them)", "short", [
            ("count", 'max(wacrm_ambiguous_unsettled{measure="count"})'),
            ("oldest (s)", 'max(wacrm_ambiguous_unsettled{measure="oldest_seconds"})')]),
        ("Ambiguous and settled sends by step (last hour)", "short", [
            ("{{step}}", "sum by (step) (increase(wacrm_ambiguous_sends_total[1h]))")]),
        ("Paused business numbers", "short", [("paused", "max(wacrm_paused_numbers)")]),
        ("Statuses from Meta by status", "ops", [
            ("{{status}}", "sum by (status) (rate(wacrm_statuses_total[5m]))")]),
    ]),
    "wacrm-database": ("wacrm: database", [
        ("Pool wait p99 by job", "s", [
            ("{{job}}", f"{Q}(0.99, sum by (le, job) (rate(wacrm_db_pool_wait_seconds_bucket[5m])))")]),
        ("Statement time p99 by verb", "s", [
            ("{{verb}}", f"{Q}(0.99, sum by (le, verb) (rate(wacrm_db_statement_seconds_bucket[5m])))")]),
        ("Statements per second by verb", "ops", [
            ("{{verb}}", "sum by (verb) (rate(wacrm_db_statement_seconds_count[5m]))")]),
        ("Time in statements per second (busy connections)", "s", [
            ("{{job}}", "sum by (job) (rate(wacrm_db_statement_seconds_sum[5m]))")]),
    ]),
}


def dashboard(uid: str, title: str, panels: list[tuple[str, str, list[tuple[str, str]]]]) -> dict:
    out = []
    for n, (panel_title, unit, targets) in enumerate(panels):
        out.append({
            "id": n + 1, "type": "timeseries", "title": panel_title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "prometheus"}}
                        for i, (legend, expr) in enumerate(targets)],
        })
    return {"uid": uid, "title": title, "tags": ["wacrm"], "timezone": "utc", "schemaVersion": 39,
            "refresh": "30s", "time": {"from": "now-3h", "to": "now"}, "editable": False, "panels": out}


def render() -> dict[str, str]:
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
            for uid, (title, panels) in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
