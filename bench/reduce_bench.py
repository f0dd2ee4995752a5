"""Reduce and serialize a big cluster: 10,000 Services x 20 endpoints (issue 2: under 1 s).

Generates Kubernetes-shaped objects (as the API's JSON decodes to), then times, cold (first run
in this process, nothing cached):
  parse      ClusterState.replace() of every object + inputs()
  reduce     reduce() -> pb.ClusterSnapshot, cluster hash included
  serialize  ClusterSnapshot.SerializeToString()
and, for scale, a baseline measured side by side: json.loads of the same objects (the least any
controller pays to read them from the API; with the GC paused, as parse and reduce run). Then
warm repeats, a no-op relist, and one node's view. Prints one line per number, and ratios
against the 1 s target and the baseline.

    .venv/bin/python bench/reduce_bench.py [--services 10000] [--endpoints 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weir.controller.core.gcpause import gc_paused
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.reduce import ReduceConfig, reduce
from weir.controller.core.state import ClusterState
from weir.controller.core.views import node_view, node_view_hash

TARGET_SECONDS = 1.0


def generate(services: int, endpoints: int, nodes: int = 3) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for i in range(services):
        name = f"svc-{i:05d}"
        ns = f"ns-{i % 50}"
        vip = f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": f"uid-{i}",
                    "creationTimestamp": "2024-05-01T10:00:00Z",
                    "labels": {"app": name, "team": f"t{i % 7}"},
                    "annotations": {"owner": "bench"},
                },
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": "weir.dev/maglev",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                    "sessionAffinity": "None",
                },
                "status": {"loadBalancer": {"ingress": [{"ip": vip, "ipMode": "VIP"}]}},
            }
        )
        eps = []
        for j in range(endpoints):
            k = i * endpoints + j
            eps.append(
                {
                    "addresses": [f"172.{16 + (k >> 16) % 16}.{(k >> 8) & 255}.{k & 255}"],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": f"worker-{k % 100}",
                    "targetRef": {"kind": "Pod", "name": f"{name}-{j}", "namespace": ns},
                }
            )
        objs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abcde",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps,
            }
        )
    for n in range(nodes):
        objs.append(
            {
                "kind": "Node",
                "metadata": {"name": f"lb-{n}", "labels": {"weir.dev/load-balancer": "true"}},
                "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{n + 1}"}]},
            }
        )
    objs.append(
        {
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "BGPPeer",
            "metadata": {"name": "tor"},
            "spec": {
                "peerAddress": "192.168.0.254",
                "peerASN": 64512,
                "localASN": 64513,
                "nodeSelector": {"matchLabels": {"weir.dev/load-balancer": "true"}},
            },
        }
    )
    return objs


@dataclass(frozen=True)
class ReduceResult:
    """Seconds, except where the name says otherwise."""

    services: int
    endpoints: int
    objects: int
    frontends: int
    backends: int
    serialized_mb: float
    baseline_json: float  # json.loads of the input, GC paused
    parse: float  # ClusterState.replace + inputs, cold
    reduce: float  # cold, hash included
    serialize: float  # cold
    warm: float  # reduce + serialize, median of the repeats
    repeats: int
    relist: float  # replace with unchanged objects
    node_view: float  # one node's view, copied
    node_view_hash: float  # per further node

    @property
    def cold(self) -> float:
        """reduce + serialize, cold: the target's measure."""
        return self.reduce + self.serialize

    @property
    def met(self) -> bool:
        return self.cold < TARGET_SECONDS


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(services: int = 10_000, endpoints: int = 20, repeat: int = 3) -> ReduceResult:
    """Cold numbers are only cold in a process that has not reduced anything yet."""
    objs = generate(services, endpoints)
    wire = json.dumps(objs)
    config = ReduceConfig(maglev_seed=42, vips_from_annotation=False)
    gc.collect()

    # Cold: the first parse, reduce and serialize in this process.
    state = ClusterState()
    t_parse, _ = timed(lambda: (state.replace(ALL_KINDS, objs), state.inputs()))
    inputs = state.inputs()
    t_reduce, result = timed(lambda: reduce(inputs, config))
    t_ser, data = timed(result.cluster.SerializeToString)
    with gc_paused():  # as parse and reduce do: a fair baseline
        t_json, _ = timed(lambda: json.loads(wire))

    warm = []
    for _ in range(repeat):
        t_r, r = timed(lambda: reduce(inputs, config))
        t_s, _ = timed(r.cluster.SerializeToString)
        assert r.cluster.hash == result.cluster.hash
        warm.append(t_r + t_s)
    gen = state.generation
    t_relist, _ = timed(lambda: state.replace(ALL_KINDS, objs))
    assert state.generation == gen, "a relist of identical objects must not change the state"
    t_view, _ = timed(lambda: node_view(result.cluster, "lb-0"))
    t_vhash, _ = timed(lambda: node_view_hash(result.cluster, "lb-1"))
    return ReduceResult(
        services, endpoints, len(objs), len(result.cluster.services),
        sum(len(s.backends) for s in result.cluster.services), len(data) / 1e6,
        t_json, t_parse, t_reduce, t_ser, statistics.median(warm), repeat, t_relist, t_view,
        t_vhash,
    )  # fmt: skip


def show(r: ReduceResult) -> None:
    print(f"input: {r.services} Services x {r.endpoints} endpoints ({r.objects} objects)")
    print(f"output: {r.frontends} frontends, {r.backends} backends, {r.serialized_mb:.1f} MB")
    print(f"baseline json.loads of the input     {r.baseline_json:8.3f} s")
    print(f"parse (ClusterState.replace)         {r.parse:8.3f} s")
    print(f"reduce (cold, incl. hash)            {r.reduce:8.3f} s")
    print(f"serialize (cold)                     {r.serialize:8.3f} s")
    print(
        f"reduce + serialize (cold)            {r.cold:8.3f} s   target {TARGET_SECONDS:.1f} s: "
        f"{r.cold / TARGET_SECONDS:.2f}x of target, {r.cold / r.baseline_json:.2f}x baseline"
    )
    full = r.parse + r.cold
    print(
        f"parse + reduce + serialize (cold)    {full:8.3f} s   "
        f"{full / TARGET_SECONDS:.2f}x of target, {full / r.baseline_json:.2f}x baseline"
    )
    print(f"reduce + serialize (warm, median/{r.repeats})   {r.warm:8.3f} s")
    print(f"no-op relist (replace, unchanged)    {r.relist:8.3f} s")
    print(f"node_view (one node, copies all)     {r.node_view:8.3f} s")
    print(f"node_view_hash (per further node)    {r.node_view_hash * 1000:8.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    show(run(args.services, args.endpoints, args.repeat))


if __name__ == "__main__":
    main()
