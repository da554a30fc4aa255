"""deploy/ validated without a Docker engine: the compose file against the compose schema, the
Kubernetes manifests with kubernetes-validate, the Prometheus config and alert rules with promtool
(and every alert's unit tests), the dashboards generated from their one description, the image
built from every package pyproject installs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing (Debian's prometheus package ships it: `apt-get install -y prometheus`, "
                    "as `make test` does when it runs as root)")
    return found


def run(*cmd: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_alert_rules_are_valid_and_every_alert_has_unit_tests() -> None:
    tool = promtool()
    run(tool, "check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus")
    out = run(tool, "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus/alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    quiet = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if not t.get("exp_alerts")}
    assert alerts == fired == quiet, "every alert needs a test where it fires and one where it stays quiet"


def test_the_prometheus_config_is_valid() -> None:
    run(promtool(), "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")


def test_the_compose_file_follows_the_compose_schema() -> None:
    run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))


def test_the_kubernetes_manifests_are_valid() -> None:
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    assert manifests
    out = run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    for kind in ("deployment/wacrm-webhook", "deployment/wacrm-inbox", "deployment/wacrm-worker",
                 "horizontalpodautoscaler/wacrm-webhook", "job/wacrm-migrate", "poddisruptionbudget/wacrm-worker",
                 "configmap/wacrm", "secret/wacrm"):
        assert f"passed for resource {kind}" in out, kind


def test_the_dashboards_are_generated_from_their_description() -> None:
    spec = importlib.util.spec_from_file_location("dashboards", DEPLOY / "grafana/dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    on_disk = {p.name: p.read_text() for p in (DEPLOY / "grafana/dashboards").glob("*.json")}
    assert rendered == on_disk, "run: python deploy/grafana/dashboards.py"
    assert set(on_disk) == {"wacrm-overview.json", "wacrm-bus.json", "wacrm-delivery.json", "wacrm-database.json"}


def test_the_image_installs_every_package_pyproject_maps() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    # each package's top-level folder in the checkout (wacrm/agents is a link to agents/, and so on)
    for folder in {(ROOT / p.replace(".", "/")).resolve().relative_to(ROOT).parts[0] for p in packages}:
        assert f"COPY {folder} {folder}" in dockerfile, folder


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    import re

    import yaml

    headings = re.findall(r"^#{2,3} (.+)$", (ROOT / "docs/RUNBOOK.md").read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]
             if "alert" in r]
    for rule in rules:
        link = rule["annotations"]["runbook"]
        assert link.startswith("docs/RUNBOOK.md#") and link.split("#", 1)[1] in anchors, (rule["alert"], link)
