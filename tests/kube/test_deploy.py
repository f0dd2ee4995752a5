"""deploy/ renders with `kubectl kustomize`, and what it renders is well formed: references
resolve, the CRDs are structural and served by the (schema-enforcing) fake, the controller
and agent are set up as the design says, and the examples are accepted and allocated."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from weir.common.version import VERSION
from weir.controller.core.objects import parse_object
from weir.controller.kube.api import KubeAPI

from .conftest import NAMESPACE, REPO, render_deploy
from .fakeapi import FakeKubeAPI
from .harness import Harness, condition, ingress

pytestmark = pytest.mark.timeout(120)

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
EXAMPLES = REPO / "deploy" / "examples" / "kubernetes"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render_deploy()


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_every_object_is_well_formed(docs: list[dict]) -> None:
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "DaemonSet",
    }
    seen = set()
    for d in docs:
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), d
        ns = d["metadata"].get("namespace")
        if d["kind"] in CLUSTER_SCOPED:
            assert ns is None, d["metadata"]
        else:
            assert ns == NAMESPACE, d["metadata"]
        key = (d["kind"], ns, d["metadata"]["name"])
        assert key not in seen
        seen.add(key)
    sas = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            pod = d["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] in sas
            assert d["spec"]["selector"]["matchLabels"].items() <= (
                d["spec"]["template"]["metadata"]["labels"].items()
            )
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                assert c["image"] == f"weir:{VERSION}", c["image"]  # the release
                assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
                assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes


def test_controller_deployment(docs: list[dict]) -> None:
    dep = one(docs, "Deployment", "weir-controller")
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 2
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["grpc"]["port"] == ports["health"]
    args = c["args"]
    listen = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    assert listen["--listen"].endswith(f":{ports['nodeplane']}")
    assert listen["--health-listen"].endswith(f":{ports['health']}")
    assert "--leader-elect" in args and "--plaintext" not in args
    # No certificate to place: the controller makes its own and serves agents' tokens.
    assert not any(a.startswith("--tls-") for a in args), args
    assert listen["--bootstrap-listen"].endswith(f":{ports['bootstrap']}")
    assert listen["--agent-token-audience"] == agent_token(docs)["audience"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(Path(listen["--local-socket"]).parent) in mounts
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The controller's flags parse (the ones the kubelet substitutes aside).
    from weir.controller.main import build_parser

    env_free = [a.replace("$(POD_NAMESPACE)", NAMESPACE).replace("$(POD_NAME)", "p") for a in args]
    parsed = build_parser().parse_args(env_free)
    assert parsed.source == "kubernetes" and parsed.leader_elect
    # Only the operator identity may drain: node certificates are signed by the same CA.
    assert parsed.operator == ["weirctl-admin"]
    assert parsed.deployment == dep["metadata"]["name"]
    svc = one(docs, "Service", "weir-controller")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"nodeplane", "bootstrap"}
    pdb = one(docs, "PodDisruptionBudget", "weir-controller")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_agent_daemonset(docs: list[dict]) -> None:
    ds = one(docs, "DaemonSet", "weir-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (c,) = pod["containers"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert set(caps["add"]) == {"BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN"}
    assert not c["securityContext"].get("privileged")
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    # Nothing from the node but its bpffs: no certificates, no kernel headers.
    assert host == {"bpffs": "/sys/fs/bpf"} and mounts["bpffs"] == "/sys/fs/bpf"
    # The agent's flags parse, with the kubelet's substitutions of its environment.
    from weir.nodeagent.main import parse_args

    parsed = parse_args([expand(a, c["env"]) for a in c["args"]])
    assert parsed.node == "node-a" and parsed.tls_server_name == "weir-controller.weir-system.svc"
    assert str(parsed.bpffs).startswith("/sys/fs/bpf/")
    assert parsed.controller.startswith("weir-controller.weir-system.svc:")
    from weir.nodeagent.identity import bootstrap_target

    svc = {p["name"]: p["port"] for p in one(docs, "Service", "weir-controller")["spec"]["ports"]}
    assert bootstrap_target(parsed.controller).endswith(f":{svc['bootstrap']}")
    assert not parsed.plaintext and parsed.tls_cert is None
    # Its identity: the projected token, and the CA bundle the controller publishes.
    assert parsed.token_file.parent == Path(mounts["token"])
    assert parsed.token_file.name == agent_token(docs)["path"]
    assert parsed.tls_ca.parent == Path(mounts["ca-bundle"])
    (bundle,) = [v["configMap"] for v in pod["volumes"] if v["name"] == "ca-bundle"]
    from weir.controller.main import build_parser

    defaults = build_parser().parse_args(["--source", "kubernetes"])
    assert bundle["name"] == defaults.ca_bundle_configmap and parsed.tls_ca.name == "ca.crt"


def agent_token(docs: list[dict]) -> dict[str, Any]:
    """The agent Pod's projected ServiceAccount token source."""
    pod = one(docs, "DaemonSet", "weir-agent")["spec"]["template"]["spec"]
    (token,) = [
        s["serviceAccountToken"]
        for v in pod["volumes"]
        for s in (v.get("projected") or {}).get("sources", [])
        if "serviceAccountToken" in s
    ]
    return dict(token)


def expand(arg: str, env: list[dict[str, Any]]) -> str:
    """arg as the kubelet gives it: $(VAR) replaced by the container's env (NODE_NAME: node-a)."""
    values = {e["name"]: e.get("value", "node-a") for e in env}
    return re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], arg)


def schema_nodes(schema: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], f"{path}{{}}")


def test_crds_are_structural_and_served(docs: list[dict]) -> None:
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} == {
        "LoadBalancerIPPool",
        "BGPPeer",
        "BGPAdvertisement",
    }
    fake = FakeKubeAPI()
    for crd in crds:
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        assert spec["group"] == "weir.dev" and spec["scope"] == "Cluster"
        (ver,) = spec["versions"]
        assert ver["name"] == "v1alpha1" and ver["served"] and ver["storage"]
        schema = ver["schema"]["openAPIV3Schema"]
        paths = set()
        for path, node in schema_nodes(schema):
            paths.add(path)
            assert node.get("type") or node.get("x-kubernetes-int-or-string"), path
        for col in ver.get("additionalPrinterColumns", []):
            # A filter ([?(@.type=="Accepted")]) picks items of a list: the items' schema.
            path = re.sub(r"\[\?\(.*?\)\]", "[]", col["jsonPath"])
            assert path == ".metadata.creationTimestamp" or path in paths, col
        fake.create(crd)  # the fake registers the kind, as the real server would
        assert fake.list(f"weir.dev/{ver['name']}", spec["names"]["kind"]) == []


def example_docs() -> list[dict]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def test_examples_are_valid_and_parse(fake: FakeKubeAPI) -> None:
    for doc in example_docs():
        stored = fake.create(copy.deepcopy(doc))  # server-side validation against the CRDs
        parse_object(stored)  # and Weir reads them without complaint


async def test_examples_get_addresses(fake: FakeKubeAPI, kube: KubeAPI) -> None:
    for doc in await asyncio.to_thread(example_docs):
        fake.create(doc)
    h = Harness(kube)
    await h.start()
    try:
        await fake.wait_until(
            lambda: all(condition(fake, n) for n in ("web", "dns-tcp", "dns-udp"))
        )
    finally:
        await h.stop()
    assert ingress(fake, "dns-tcp") == ingress(fake, "dns-udp") == ["192.0.2.30"]
    assert ingress(fake, "web") == ["192.0.2.1"]  # avoidBuggyIPs: not 192.0.2.0
