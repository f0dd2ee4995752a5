"""The alerting rules and the dashboard of deploy/monitoring, checked by promtool: the rules
are valid, every alert fires on the series made for it (alerts_test.yaml), and the metric
names the agent and the controller export follow Prometheus' conventions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.requirements import KUBECTL, PROMTOOL, require, requires

pytestmark = requires(PROMTOOL)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
HERE = Path(__file__).resolve().parent


def rule_file(directory: Path) -> Path:
    """The PrometheusRule's spec as a plain rule file (what Prometheus without the operator
    loads)."""
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    path = directory / "weir-rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def dashboard_queries() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def promtool(*args: str, cwd: Path | None = None) -> str:
    run = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_rules_are_valid_and_every_alert_fires_when_it_should(tmp_path: Path) -> None:
    rules = rule_file(tmp_path)
    promtool("check", "rules", str(rules))
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    tests["rule_files"] = [str(rules)]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests))
    promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]}
    assert alerts == tested


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each panel query as a recording rule.
    exprs = [e.replace("$__rate_interval", "1m") for e in dashboard_queries()]
    assert len(exprs) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"weir:dashboard_{i}", "expr": e} for i, e in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path))


def test_the_component_renders_on_top_of_the_base(tmp_path: Path) -> None:
    require(KUBECTL)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../deploy"],
                "components": ["../deploy/monitoring"],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out)}
    assert {
        ("PodMonitor", "weir-agent"),
        ("PodMonitor", "weir-controller"),
        ("PrometheusRule", "weir"),
        ("ConfigMap", "weir-grafana-dashboard"),
        ("DaemonSet", "weir-agent"),
    } <= docs
