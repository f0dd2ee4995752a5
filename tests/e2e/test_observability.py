"""Operators see the traffic: a real Prometheus (Debian's) scrapes the agents and the
controller of a lab, with deploy/monitoring's rules loaded; `weirctl flows` follows an agent's
flow log.

    client ─┐
    lb1 ────┤ bridge ── b1, b2 (DSR backends)
    lb2 ────┤
    ctl ────┘ weir-controller, and prometheus (scraping every second, rules every second,
              every alert's `for` set to 0: the scenarios here are made to fire them)

Checked: after known traffic through lb1, the per-service packet and new-flow counters in
Prometheus are exactly what the client sent; every dashboard query returns data (but the
ones this topology cannot feed: no BGP, no IPAM, listed below) and every alert expression
evaluates; the alerts fire in their scenarios (a full services map, a service the agents
cannot apply, an agent stopped, and a version it then misses); a connection's decision shows
in `weirctl flows --follow` within a second, with the backend that answered, on the node and
through the controller (`--node`).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from weir.lab import manifests, traffic
from weir.lab.client import Target
from weir.lab.deployment import Deployment
from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.lab.processes import BIN, AgentOptions, ControllerOptions
from weir.lab.roles import attach_xdp_pass, dsr_backend, finish_checksums

from tests.monitoring.test_rules import dashboard_queries, rule_file
from tests.requirements import ETHTOOL, PROMETHEUS, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, ETHTOOL, PROMETHEUS)]

PREFIX = "wobs"
VIP = "192.0.2.20"
PORT = 80
OTHER_VIP = "192.0.2.21"  # a second service: the services map (2 entries) is full
CTL_ADDR = "10.78.0.2"
CLIENT_ADDR = "10.78.0.10"
LBS = {"lb1": "10.78.0.21", "lb2": "10.78.0.22"}
BACKENDS = {"b1": "10.78.0.31", "b2": "10.78.0.32"}
NOBODY = "10.78.0.99"  # a backend address nobody answers ARP for: never applied
METRICS_PORT = 9478
FLOWS = "127.0.0.1:9479"
CTL_METRICS = 9100
PROM = "127.0.0.1:9090"
SERVICE = {"namespace": "default", "name": "web", "vip": VIP, "port": str(PORT)}
# Dashboard queries this topology cannot feed (promtool tests the alerts on them).
NO_DATA_HERE = ("weir_bgp_session_up", "weir_bfd_session_up", "weir_ipam_pool")


@dataclass
class Lab:
    client: Host
    ctl: Host
    weir: Deployment
    prometheus: subprocess.Popen

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self._api("query", {"query": expr})["result"]

    def alerts(self) -> set[tuple[str, str]]:
        """(alert, node) of every firing alert."""
        out = self._api("alerts", {})["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("node", "")) for a in out
                if a["state"] == "firing"}  # fmt: skip

    def _api(self, path: str, params: dict[str, str]) -> Any:
        url = f"http://{PROM}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with self.ctl.entered(), urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, want: float, timeout: float = 20) -> None:
        wait_until(lambda: self.value(expr) == want, f"{expr} == {want}", timeout)

    def wait_alert(self, alert: str, node: str = "", firing: bool = True) -> None:
        what = f"{alert} ({node}) {'firing' if firing else 'resolved'}"
        wait_until(lambda: ((alert, node) in self.alerts()) == firing, what, 30)

    def client_segments(self) -> int:
        """TCP segments the client sent so far (its namespace's own counter)."""
        lines = self.client.run(["cat", "/proc/net/snmp"]).splitlines()
        names, values = [line.split() for line in lines if line.startswith("Tcp:")]
        return int(values[names.index("OutSegs")])


def wait_until(done: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll what Prometheus (or a counter) says until done(): they change on their own
    schedules (scrapes and rule evaluations every second), with no event to await."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not so within {timeout} s: {what}"
        time.sleep(0.25)


def prometheus_config(workdir: Path) -> Path:
    rules = yaml.safe_load(rule_file(workdir).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"  # the scenarios below fire them at once
    (workdir / "weir-rules.yaml").write_text(yaml.safe_dump(rules))
    agents = [
        {"targets": [f"{addr}:{METRICS_PORT}"], "labels": {"node": name}}
        for name, addr in LBS.items()
    ]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(workdir / "weir-rules.yaml")],
        "scrape_configs": [
            {"job_name": "weir-system/weir-agent", "static_configs": agents},
            {
                "job_name": "weir-system/weir-controller",
                "static_configs": [{"targets": [f"{CTL_ADDR}:{CTL_METRICS}"]}],
            },
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(ctl: Host, workdir: Path) -> subprocess.Popen:
    config = prometheus_config(workdir)
    proc = ctl.popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address={PROM}", "--log.level=warn"],
        log=workdir / "prometheus.log",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while ctl.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://{PROM}/-/ready"], check=False) != "200":  # fmt: skip
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "prometheus did not become ready"
        time.sleep(0.3)
    return proc


def write_manifest(weir: Deployment, other_backends: list[str]) -> None:
    nodes = [manifests.node(name, address) for name, address in LBS.items()]
    web = manifests.service("web", VIP, PORT)
    web_eps = manifests.endpoint_slice("web", PORT, list(BACKENDS.values()))
    # The second service's only backend never resolves: the agents cannot apply it (nacks).
    other = manifests.service("other", OTHER_VIP, PORT)
    other_eps = manifests.endpoint_slice("other", PORT, other_backends)
    weir.write_manifests("svc.yaml", [*nodes, web, web_eps, other, other_eps])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        br = topo.bridge("br")
        ctl = topo.host("ctl")
        topo.link(ctl, br, f"{CTL_ADDR}/24")
        client = topo.host("client")
        topo.link(client, br, f"{CLIENT_ADDR}/24")
        finish_checksums(client)
        lbs, ports = {}, []
        for name, addr in LBS.items():
            lbs[name] = topo.host(name)
            ports.append(topo.link(lbs[name], br, f"{addr}/24"))
        for name, addr in BACKENDS.items():
            h = topo.host(name)
            topo.link(h, br, f"{addr}/24")
            dsr_backend(h, [VIP])
            traffic.serve(h, name, PORT, proto="lines")
        attach_xdp_pass(ports)
        workdir = topo.workdir()
        weir = Deployment(
            topo, workdir, ctl, lbs,
            controller=ControllerOptions(metrics_listen=f"0.0.0.0:{CTL_METRICS}"),
            agent=AgentOptions(
                max_services=2, metrics_address=f"0.0.0.0:{METRICS_PORT}",
                metrics_per_backend=True, flow_sample=1, flows_address=FLOWS,
                extra=("--neighbor-retry", "0.5"),
            ),
            tail_lines=30,
        )  # fmt: skip
        write_manifest(weir, [BACKENDS["b2"], NOBODY])
        weir.start_controller()
        for name in LBS:
            weir.start_agent(name, bgp_on_stop="restart")
        client.route(f"{VIP}/32", LBS["lb1"])
        weir.converge(timeout=60)
        yield Lab(client, ctl, weir, start_prometheus(ctl, workdir))


def test_counters_in_prometheus_match_what_the_client_sent(lab: Lab) -> None:
    labels = ",".join(f'{k}="{v}"' for k, v in {**SERVICE, "node": "lb1"}.items())
    packets = f"weir_service_packets_total{{{labels}}}"
    flows = f"weir_service_new_flows_total{{{labels}}}"
    lab.wait_value(f"count({packets})", 1)
    packets_before, flows_before = lab.value(packets) or 0, lab.value(flows) or 0
    segments_before = lab.client_segments()
    results = traffic.burst(lab.client, Target(VIP, PORT, "lines"), sports=range(43000, 43050))
    assert all(r.ok for r in results)
    lab.wait_value(flows, flows_before + 50)
    # Every segment the client sent went through lb1 (the last ACKs may leave a little after
    # the connections ended: both sides are read again until they agree).
    wait_until(
        lambda: (
            (lab.value(packets) or 0) - packets_before == lab.client_segments() - segments_before
        ),
        "packets counted == segments the client sent",
        20,
    )
    per_backend = lab.query(f"sum by (backend) (weir_backend_new_flows_total{{{labels}}})")
    assert {r["metric"]["backend"] for r in per_backend} == {
        f"{a}:{PORT}" for a in BACKENDS.values()
    }


def test_every_dashboard_query_returns_data_and_every_rule_evaluates(
    lab: Lab, tmp_path: Path
) -> None:
    lab.wait_value('count(up{job="weir-system/weir-agent"} == 1)', 2)
    # rate() needs two samples in its window: every target scraped a few times first
    wait_until(lambda: (lab.value("min(count_over_time(up[1m]))") or 0) >= 3, "3 scrapes", 20)
    empty = []
    for expr in dashboard_queries():
        result = lab.query(expr.replace("$__rate_interval", "1m"))
        if not result and not any(m in expr for m in NO_DATA_HERE):
            empty.append(expr)
    assert empty == []
    rules = yaml.safe_load(rule_file(tmp_path).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            lab.query(rule["expr"])  # parses and evaluates (status success)


def test_alerts_fire_in_their_scenarios(lab: Lab) -> None:
    # The services map holds 2 services, both used; "other" has no backend the agents can
    # resolve: each agent reports it in every status.
    for node in LBS:
        lab.wait_alert("WeirMapNearCapacity", node)
        lab.wait_alert("WeirAgentPersistentNacks", node)
    lab.weir.stop_agent("lb2")
    try:
        lab.wait_alert("WeirAgentDown", "lb2")
        write_manifest(lab.weir, [BACKENDS["b1"]])  # a version lb2 misses
        lab.wait_alert("WeirAgentBehindController", "lb2")
        lab.weir.converge(nodes=["lb1"])
        lab.wait_alert("WeirAgentBehindController", "lb1", firing=False)
        lab.wait_alert("WeirAgentPersistentNacks", "lb1", firing=False)  # "other" applies now
    finally:
        lab.weir.start_agent("lb2", bgp_on_stop="restart")
        lab.weir.converge(timeout=60)


def test_weirctl_flows_follow_shows_a_connection_within_a_second(lab: Lab) -> None:
    lb1 = lab.weir.nodes["lb1"]
    weirctl = [str(BIN / "weirctl"), "flows", "--agent", FLOWS]
    wait_until(
        lambda: subprocess.run(lb1.cmd([*weirctl, "--limit", "0"])).returncode == 0,
        "the agent serves its flow log",
        30,
    )
    proc = lb1.popen([*weirctl, *FOLLOW], stdout=subprocess.PIPE)
    try:
        shows_a_connection_within_a_second(lab, proc, 44000)
    finally:
        proc.kill()


def test_weirctl_flows_through_the_controller_shows_a_connection_within_a_second(
    lab: Lab,
) -> None:
    """The same from the controller's host: the controller relays lb1's decisions from its
    agent (over the agent's stream) while weirctl watches."""
    weirctl = [str(BIN / "weirctl"), "--controller", f"127.0.0.1:{lab.weir.port}", "flows"]
    proc = lab.ctl.popen([*weirctl, "--node", "lb1", *FOLLOW], stdout=subprocess.PIPE)
    try:
        shows_a_connection_within_a_second(lab, proc, 44100)
    finally:
        proc.kill()
    unknown = subprocess.run(
        lab.ctl.cmd([*weirctl, "--node", "nowhere"]), capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


FOLLOW = ("--follow", "--limit", "1", "-o", "json", "--service", "default/web")


def shows_a_connection_within_a_second(lab: Lab, proc: subprocess.Popen, sport: int) -> None:
    """weirctl flows FOLLOW in proc shows the decision of a connection from `sport` within
    a second of it, with the backend that answered."""
    target = Target(VIP, PORT, "lines")
    assert traffic.burst(lab.client, target, sports=[sport + 1])[0].ok  # a decision to show
    lines = traffic.Lines(proc.stdout)  # type: ignore[arg-type]
    # The last decision kept comes once the agent (or the controller) registered this follower.
    assert lines.next(10) is not None, "weirctl flows printed nothing"
    (conn,) = traffic.burst(lab.client, target, sports=[sport])
    assert conn.ok
    while True:
        line = lines.next(max(0.0, conn.t + 1.0 - time.time()))
        assert line is not None, "no decision for the connection within a second"
        d = json.loads(line)
        if d["client_port"] == sport and d["how"] == "maglev":
            break
    print(f"decision shown {1000 * (time.time() - d['time']):.0f} ms after it was made")
    assert d["backend"] == f"{BACKENDS[conn.backend]}:{PORT}"
    assert (d["client"], d["vip"], d["service"], d["action"]) == (
        CLIENT_ADDR, VIP, "default/web", "tx",
    )  # fmt: skip
