"""The real weir-controller command on a manifests directory, inspected with weirctl."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.ctl.controller_cmds import format_agents, format_errors
from weir.lab.processes import ControllerOptions
from weir.nodeagent.controller_client import ControllerClient

from tests.controller.controller_proc import (
    Controller,
    free_port,
    running_controller,
    weirctl,
)
from tests.controller.plane_support import Recorder

pytestmark = pytest.mark.timeout(90)

SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations: {weir.dev/load-balancer-ips: "192.0.2.10"}
spec:
  type: LoadBalancer
  loadBalancerClass: weir.dev/maglev
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"""

SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
"""

ENDPOINT = """  - addresses: ["{ip}"]
    nodeName: worker-1
    conditions: {{ready: true, serving: true, terminating: false}}
"""

# lb-1 is a load-balancer node by the controller's --lb-node-selector below; the pods run on
# worker-1, reached by encapsulation.
NODES = """
apiVersion: v1
kind: Node
metadata: {name: lb-1, labels: {role: balancer}}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.5}]}
"""


def write_slice(directory: Path, ips: list[str]) -> None:
    text = SLICE + "".join(ENDPOINT.format(ip=ip) for ip in ips)
    tmp = directory / ".slice.tmp"
    tmp.write_text(text)
    tmp.replace(directory / "slice.yaml")  # atomic: the poller never sees half a file


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[tuple[Controller, str, Path]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "service.yaml").write_text(SERVICE)
    (manifests / "nodes.yaml").write_text(NODES)
    write_slice(manifests, ["10.10.0.11"])
    (manifests / "broken.yaml").write_text("kind: Service\nmetadata: [unclosed\n")
    metrics = f"127.0.0.1:{free_port()}"
    async with running_controller(
        manifests,
        metrics_listen=metrics,
        lb_node_selector="role in (balancer)",
        encap_port=7000,
    ) as (ctl, target):
        ctl.metrics = metrics
        yield ctl, target, manifests


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


async def test_controller_serves_the_manifests_and_weirctl_shows_them(
    controller: tuple[Controller, str, Path],
) -> None:
    ctl, target, manifests = controller
    rec = Recorder()
    agent = ControllerClient(target, "lb-1", rec, backoff_initial=0.05, backoff_max=0.5)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(30):
            view = await agent.wait_version(1)
            assert list(view.services) == ["192.0.2.10:80/TCP"]
            # An edit on disk becomes version 2, delivered as a delta.
            write_slice(manifests, ["10.10.0.11", "10.10.0.12"])
            view = await agent.wait_version(2)
        backends = [b.address for b in view.services["192.0.2.10:80/TCP"].backends]
        assert backends == ["10.10.0.11", "10.10.0.12"]
        assert rec.kinds() == [(1, 0, True), (2, 1, False)]

        text = await weirctl(target, "snapshot")
        assert "version 2" in text
        assert "192.0.2.10:80/TCP" in text and "demo/web" in text and "2/2" in text
        assert "lb-1      10.0.0.1  load-balancer  0" in text
        assert "worker-1  10.0.0.5  backend        2                10.0.0.1" in text
        node = await weirctl(target, "snapshot", "--node", "lb-1", "--backends")
        assert "node lb-1" in node and "10.10.0.12:8080" in node
        assert "roles: load-balancer  address 10.0.0.1  encap port 7000" in node
        assert "10.10.0.12:8080  1       worker-1  encap  10.0.0.5  ready,serving" in node
        assert "BGP: none" in node
        worker = await weirctl(target, "snapshot", "--node", "worker-1")
        assert "services 0" in worker and "roles: backend  address 10.0.0.5" in worker
        assert "accepts encapsulated packets from: 10.0.0.1" in worker
        assert "192.0.2.10:80/TCP  10.10.0.12:8080" in worker
        as_json = json.loads(await weirctl(target, "snapshot", "-o", "json"))
        assert as_json["version"] == "2"

        agents = await weirctl(target, "agents")
        header, row = [line.split() for line in agents.splitlines()[2:4]]
        assert dict(zip(header, row, strict=False))["NODE"] == "lb-1"
        assert row[:5] == ["lb-1", "yes", "2", "2", "0"]

        errors = await weirctl(target, "errors")
        assert "File" in errors and "broken.yaml" in errors

        body = await asyncio.to_thread(fetch, f"http://{ctl.metrics}/metrics")
        assert "weir_snapshot_version 2.0" in body
        assert "weir_connected_agents 1.0" in body
        assert 'weir_agent_version_lag{node="lb-1"} 0.0' in body
        assert "weir_object_errors 1.0" in body
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    ctl.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        assert await ctl.proc.wait() == 0
    assert any(line.get("event") == "weir-controller stopped" for line in ctl.lines)


async def test_refuses_to_start_without_tls_or_plaintext(tmp_path: Path) -> None:
    opts = ControllerOptions(manifests=tmp_path, listen="127.0.0.1:0", plaintext=False)
    proc = await asyncio.create_subprocess_exec(*opts.argv(), stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode != 0
    assert b"refusing to serve without TLS" in err


def test_weirctl_tables_show_errors_per_agent_and_object() -> None:
    resp = pb.ListAgentsResponse(
        version=7,
        agents=[
            pb.AgentInfo(node="lb-1", connected=True, sent_version=7, acked_version=7),
            pb.AgentInfo(
                node="lb-2",
                connected=False,
                sent_version=6,
                acked_version=5,
                error="map full",
                service_errors=[pb.ServiceError(service_id="192.0.2.1:80/TCP", message="no room")],
            ),
        ],
    )
    text = format_agents(resp, now=0)
    rows = [line.split() for line in text.splitlines()]
    assert rows[3][:6] == ["lb-1", "yes", "7", "7", "0", "0"]
    assert rows[4][:6] == ["lb-2", "no", "6", "5", "2", "2"]
    assert rows[6:] == [
        ["NODE", "SERVICE", "ERROR"],
        ["lb-2", "(version)", "map", "full"],
        ["lb-2", "192.0.2.1:80/TCP", "no", "room"],
    ]
    errors = pb.ListErrorsResponse(
        errors=[pb.ObjectError(kind="File", name="/m/x.yaml", message="bad YAML")]
    )
    assert format_errors(errors).splitlines()[1].split() == [
        "File",
        "-",
        "/m/x.yaml",
        "bad",
        "YAML",
    ]
    assert format_errors(pb.ListErrorsResponse()) == "no errors"
