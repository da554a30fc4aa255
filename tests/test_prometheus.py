"""A real Prometheus (Debian's package) scrapes a running system; every dashboard panel's query
must return data once the traffic that feeds it has happened, and every alert rule reads series the
system exports and stays quiet while it is healthy."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Stack, eventually

from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.whatsapp import simulate

ROOT = Path(__file__).resolve().parents[1]

# Panels whose metric cannot be fed here, each with why (the fault suite covers them instead).
NOT_FED = {
    'sum by (step) (increase(wacrm_ambiguous_sends_total[1h]))':
        "needs a Graph API call that times out after the request went out (GRAPH_TIMEOUT_SECONDS) and its "
        "settling; the fault suite's meta_slow and kill9 scenarios produce it",
}


def dashboard_queries() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "deploy/grafana/dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(f"{title} / {panel}", expr) for title, panels in module.DASHBOARDS.values()
            for panel, _, targets in panels for _, expr in targets]


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is missing (Debian's prometheus package: `apt-get install -y prometheus`, as "
                    "`make test` does when it runs as root)")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{ROOT / 'deploy/prometheus/alerts.yml'}"]
scrape_configs:
  - job_name: wacrm-webhook
    static_configs: [{{targets: ["127.0.0.1:{stack.port}"]}}]
  - job_name: wacrm-worker
    static_configs: [{{targets: ["127.0.0.1:{stack.worker_metrics_port}"]}}]
""")
    port = free_port()
    proc = procs.spawn([binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}"], log_path=work / "prometheus.log")
    try:
        wait_for_port(port, 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc, timeout=20)


async def ready(base: str) -> bool:
    """Prometheus opens its port before its storage is loaded; until then its API answers 503 in plain text."""
    async with aiohttp.ClientSession() as s, s.get(f"{base}/-/ready") as r:
        return r.status == 200


async def query(base: str, expr: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def feed(stack: Stack, round: int) -> None:
    """Traffic for every panel: replies (latencies, sends, statuses), a refused signature, a retried send,
    a dead letter, an inbox request."""
    async with aiohttp.ClientSession() as s:
        await s.post(f"{stack.fake_meta}/__fail", json={"count": 1, "code": 130429, "http_status": 429})
    for n in range(3):
        body = simulate.dumps(simulate.text_body(text=f"what is the price? {n}", wa_id=f"155500880{round}{n}"))
        assert (await stack.post(body))[0] == 200
    assert (await stack.post(b'{"object": "whatsapp_business_account"}', sign_with="wrong-secret"))[0] == 403
    assert (await stack.post(b'["not", "a", "webhook"]'))[0] == 200  # parsed by ingest: a dead letter
    async with aiohttp.ClientSession() as s, s.get(f"{stack.base}/api/v1/conversations") as r:
        assert r.status == 401


async def test_every_dashboard_panel_returns_data(stack: Stack, prometheus: str) -> None:
    await eventually(lambda: ready(prometheus), 60, "Prometheus to be ready")
    await eventually(lambda: query(prometheus, 'up{job="wacrm-worker"} == 1'), 60, "the first scrapes")
    await asyncio.sleep(2)  # a scrape before the traffic: rates need an increase between two samples
    # Twice: a labelled series is born with its first event, so a rate needs a second one after a scrape.
    await feed(stack, 0)
    await asyncio.sleep(3)
    await feed(stack, 1)
    queries = dashboard_queries()
    assert len(queries) >= 20
    missing: list[str] = []

    async def all_fed() -> bool:
        missing.clear()
        for name, expr in queries:
            if expr not in NOT_FED and not has_number(await query(prometheus, expr)):
                missing.append(f"{name}: {expr}")
        return not missing

    try:
        await eventually(all_fed, 90, "every panel's query to return data")
    except AssertionError:
        raise AssertionError("panels without data:\n" + "\n".join(missing)) from None
    for expr, why in NOT_FED.items():
        assert any(expr == e for _, e in queries), f"NOT_FED names a query no panel has: {expr} ({why})"


async def test_the_alerts_read_series_the_system_exports_and_stay_quiet_while_it_is_healthy(
        stack: Stack, prometheus: str) -> None:
    rules = [r for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    names = {n for r in rules for n in re.findall(r"\bwacrm_[a-z_]+", r["expr"])}
    await eventually(lambda: ready(prometheus), 60, "Prometheus to be ready")
    await eventually(lambda: query(prometheus, 'up{job="wacrm-worker"} == 1'), 60, "the first scrapes")
    await feed(stack, 2)
    missing: set[str] = set()

    async def all_exported() -> bool:
        missing.clear()
        for name in names:
            if not await query(prometheus, f'{{__name__="{name}"}}'):
                missing.add(name)
        return not missing

    try:
        await eventually(all_exported, 90, "a series of every metric the alerts read")
    except AssertionError:
        raise AssertionError(f"alerts read metrics the system does not export: {sorted(missing)}") from None

    async def evaluated() -> list[dict[str, Any]] | None:
        async with aiohttp.ClientSession() as s, s.get(f"{prometheus}/api/v1/rules", params={"type": "alert"}) as r:
            found = [rule for g in (await r.json())["data"]["groups"] for rule in g["rules"]]
        return found if found and all(rule.get("lastEvaluation", "").startswith("20") for rule in found) else None

    await asyncio.sleep(3)  # a few evaluations over the fed traffic
    alerts = {rule["name"]: rule for rule in await eventually(evaluated, 60, "the alert rules to be evaluated")}
    assert set(alerts) == {r["alert"] for r in rules if "alert" in r}
    for name in ("WorkersDown", "WebhookDown", "WorkerLoopStuck", "RepliesStopped"):
        assert (alerts[name]["health"], alerts[name]["state"]) == ("ok", "inactive"), alerts[name]
