"""Parsers of the Kubernetes objects Weir reads: fields, defaults, clear errors, no crashes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from weir.controller.core.crds import (
    IPPool,
    parse_bgp_advertisement,
    parse_bgp_peer,
    parse_ip_pool,
)
from weir.controller.core.objects import (
    ALL_KINDS,
    Service,
    object_ref,
    parse_endpoint_slice,
    parse_node,
    parse_object,
    parse_secret,
    parse_service,
)
from weir.controller.core.parsing import ParseError
from weir.controller.core.selectors import parse_selector, parse_selector_string

from tests.controller.reduce_support import endpoint_slice, node, peer, service, weir
from tests.kube.builders import secret


def test_service_fields() -> None:
    raw = service(
        "web",
        "shop",
        ips=["192.0.2.10", "2001:DB8::10", "192.0.2.10"],
        ports=[("http", 80, "TCP"), ("dns", 53, "UDP")],
        annotations={
            "weir.dev/traffic-strategy": "random",
            "weir.dev/sharing-key": "k1",
            "weir.dev/maglev-table-size": "4093",
        },
        labels={"app": "web"},
        created="2024-05-01T10:00:00Z",
        status_ips=["198.51.100.1"],
        affinity_timeout=600,
    )
    raw["metadata"]["uid"] = "u-1"
    svc = parse_service(raw)
    assert (svc.namespace, svc.name, svc.uid) == ("shop", "web", "u-1")
    assert svc.type == "LoadBalancer" and svc.load_balancer_class == "weir.dev/maglev"
    assert [(p.name, p.port, p.protocol) for p in svc.ports] == [
        ("http", 80, "TCP"),
        ("dns", 53, "UDP"),
    ]
    # Canonical and deduplicated: one spelling per address.
    assert svc.requested_ips == ("192.0.2.10", "2001:db8::10")
    assert svc.ingress_ips == ("198.51.100.1",)
    assert svc.strategy == "random" and svc.sharing_key == "k1"
    assert svc.maglev_table_size == 4093
    assert (svc.session_affinity, svc.affinity_timeout) == ("ClientIP", 600)
    assert svc.labels == {"app": "web"}
    assert svc.created == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert svc.problems == ()


def test_service_defaults_and_deprecated_load_balancer_ip() -> None:
    raw = {"kind": "Service", "metadata": {"name": "a"}, "spec": {"loadBalancerIP": "10.1.1.1"}}
    svc = parse_service(raw)
    assert svc.namespace == "default" and svc.type == "ClusterIP"
    assert svc.requested_ips == ("10.1.1.1",)
    assert svc.strategy == "maglev" and svc.maglev_table_size is None
    assert svc.session_affinity == "None" and svc.created is None
    assert svc.ports == ()


@pytest.mark.parametrize(
    ("cls", "svc_type", "annotation", "default_class", "handled"),
    [
        ("weir.dev/maglev", "LoadBalancer", False, False, True),
        ("other.io/lb", "LoadBalancer", True, True, False),  # another implementation's
        (None, "LoadBalancer", True, False, True),
        (None, "LoadBalancer", False, False, False),
        (None, "LoadBalancer", False, True, True),
        ("weir.dev/maglev", "ClusterIP", True, True, False),
    ],
)
def test_service_handled_by_weir(
    cls: str | None, svc_type: str, annotation: bool, default_class: bool, handled: bool
) -> None:
    ann = {"weir.dev/traffic-strategy": "maglev"} if annotation else {}
    svc = parse_service(service("a", cls=cls, svc_type=svc_type, annotations=ann))
    assert svc.handled_by_weir(default_class) is handled


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({"weir.dev/traffic-strategy": "roundrobin"}, "not maglev or random"),
        ({"weir.dev/maglev-table-size": "1000"}, "not prime"),
        ({"weir.dev/maglev-table-size": "7"}, "out of range"),
        ({"weir.dev/maglev-table-size": "big"}, "not an integer"),
        ({"weir.dev/load-balancer-ips": "192.0.2.1,not-an-ip"}, "'not-an-ip' is not an IP"),
    ],
)
def test_service_weir_problems_keep_the_object(annotations: dict[str, str], needle: str) -> None:
    raw = service("a", ips=None, annotations=annotations)
    svc = parse_service(raw)
    assert len(svc.problems) == 1 and needle in svc.problems[0], svc.problems


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o["spec"]["ports"][0].update(port=70000), "out of range [1, 65535]"),
        (lambda o: o["spec"]["ports"][0].update(port="http"), "not an integer"),
        (lambda o: o["spec"]["ports"][0].update(protocol="ICMP"), "not TCP, UDP or SCTP"),
        (lambda o: o["spec"]["ports"].append(dict(o["spec"]["ports"][0])), "listed twice"),
        (lambda o: o["metadata"].pop("name"), "metadata.name: required"),
        (lambda o: o.update(spec=[1, 2]), "spec: expected an object"),
        (lambda o: o["metadata"].update(labels={"a": 1}), "metadata.labels"),
        (lambda o: o["spec"].update(sessionAffinity="Sticky"), "sessionAffinity"),
        (lambda o: o["metadata"].update(creationTimestamp="yesterday"), "not a time"),
    ],
)
def test_service_parse_errors_name_the_field(mutate: Any, needle: str) -> None:
    raw = service("a")
    mutate(raw)
    with pytest.raises(ParseError, match=None) as info:
        parse_service(raw)
    assert needle in str(info.value)


def test_endpoint_slice_conditions_defaults_and_bad_endpoints() -> None:
    raw = endpoint_slice(
        "s1",
        "web",
        [
            "10.0.0.3",  # all conditions unset: ready, serving, not terminating
            ("10.0.0.1", False, True, True),
            ("10.0.0.2", True, None, None),
            "10.0.0.10",
        ],
    )
    raw["endpoints"].append({"addresses": ["not-an-ip"]})
    raw["endpoints"].append({"addresses": []})
    raw["endpoints"].append("garbage")
    raw["endpoints"].append({"addresses": ["fd00::1"]})  # wrong family for an IPv4 slice
    raw["endpoints"].append({"addresses": ["10.0.0.9"], "conditions": {"ready": "yes"}})
    raw["endpoints"].append({"addresses": ["10.0.0.8"], "weight": 5})
    s = parse_endpoint_slice(raw)
    assert s.service_name == "web" and s.address_type == "IPv4"
    # Sorted numerically: 10.0.0.10 after 10.0.0.9's would-be place, not after "10.0.0.1".
    assert [e.address for e in s.endpoints] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.8",
        "10.0.0.10",
    ]
    by = {e.address: e for e in s.endpoints}
    assert (by["10.0.0.3"].ready, by["10.0.0.3"].serving, by["10.0.0.3"].terminating) == (
        True,
        True,
        False,
    )
    assert (by["10.0.0.1"].ready, by["10.0.0.1"].serving, by["10.0.0.1"].terminating) == (
        False,
        True,
        True,
    )
    assert by["10.0.0.8"].weight == 5 and by["10.0.0.3"].weight == 1
    assert by["10.0.0.3"].node == "worker-1"
    assert len(s.problems) == 5
    assert any("'not-an-ip' is not an IPv4 address" in p for p in s.problems)
    assert any("endpoints[6]" in p for p in s.problems)  # garbage
    assert [e.address for e in s.usable] == ["10.0.0.2", "10.0.0.3", "10.0.0.8", "10.0.0.10"]
    assert [e.address for e in s.fallback] == ["10.0.0.1"]


def test_endpoint_slice_ipv6_canonical_and_duplicates() -> None:
    raw = endpoint_slice("s6", "web", ["FD00::0001", "fd00::1", "fd00::2"], family="IPv6")
    s = parse_endpoint_slice(raw)
    assert [e.address for e in s.endpoints] == ["fd00::1", "fd00::2"]
    assert any("listed twice" in p for p in s.problems)


def test_endpoint_slice_fqdn_and_all_ports() -> None:
    raw = endpoint_slice("f", "web", [], family="FQDN")
    raw["endpoints"] = [{"addresses": ["example.com"]}]
    raw["ports"].append({"name": "any"})  # port unset: "all ports", not usable by us
    s = parse_endpoint_slice(raw)
    assert s.endpoints == () and s.problems == ()
    assert [p.name for p in s.ports] == ["http"]
    with pytest.raises(ParseError, match="addressType"):
        parse_endpoint_slice({**raw, "addressType": "IPv5"})


def test_node_router_id() -> None:
    n = parse_node(node("lb-1", "172.16.0.9", role="lb"))
    assert n.router_id() == "172.16.0.9" and n.labels == {"role": "lb"}
    raw = node("lb-2", None)
    raw["status"]["addresses"] += [
        {"type": "InternalIP", "address": "fd00::9"},
        {"type": "ExternalIP", "address": "198.51.100.9"},
    ]
    assert parse_node(raw).router_id() == "198.51.100.9"
    assert parse_node(node("lb-3", None)).router_id() == ""


def test_secret_data_and_string_data() -> None:
    raw = secret("s", "ns", password="p1")
    raw["data"] = {"password": "aWdub3JlZA==", "other": "b3RoZXI="}
    s = parse_secret(raw)
    assert s.data == {"password": b"p1", "other": b"other"}  # stringData wins, as in the API
    with pytest.raises(ParseError, match="base64"):
        parse_secret({"kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "!!"}})


def selects(pool: IPPool, svc: Service, namespace_labels: dict[str, str] | None = None) -> bool:
    return pool.selects(svc.namespace, svc.labels, namespace_labels)


def test_ip_pool() -> None:
    pool = parse_ip_pool(
        weir(
            "LoadBalancerIPPool",
            "p",
            {
                "cidrs": ["192.0.2.0/28", "2001:db8::/126"],
                "ranges": [{"start": "198.51.100.10", "end": "198.51.100.12"}],
                "autoAssign": False,
                "serviceSelector": {"matchLabels": {"exposure": "public"}},
                "namespaces": ["prod"],
            },
            tier="gold",
        )
    )
    assert pool.contains("192.0.2.15") and not pool.contains("192.0.2.16")
    assert pool.contains("2001:db8::3") and pool.contains("198.51.100.12")
    assert not pool.contains("198.51.100.13")
    assert pool.auto_assign is False and pool.avoid_buggy_ips is False
    prod = parse_service(service("a", "prod", labels={"exposure": "public"}))
    dev = parse_service(service("a", "dev", labels={"exposure": "public"}))
    assert selects(pool, prod) and not selects(pool, dev)
    assert not selects(pool, parse_service(service("b", "prod")))
    for spec, needle in [
        ({}, "needs at least one"),
        ({"cidrs": ["192.0.2.1/24"]}, "host bits"),
        ({"ranges": [{"start": "192.0.2.9", "end": "192.0.2.1"}]}, "is after end"),
        ({"ranges": [{"start": "192.0.2.1", "end": "fd00::1"}]}, "different IP families"),
    ]:
        with pytest.raises(ParseError, match=needle):
            parse_ip_pool(weir("LoadBalancerIPPool", "p", spec))


def test_ip_pool_namespace_selector_defaults_to_the_name_label() -> None:
    pool = parse_ip_pool(
        weir(
            "LoadBalancerIPPool",
            "p",
            {
                "cidrs": ["192.0.2.0/28"],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}},
            },
        )
    )
    assert selects(pool, parse_service(service("a", "prod")))
    assert not selects(pool, parse_service(service("a", "dev")))
    prod = {"kubernetes.io/metadata.name": "prod"}
    assert selects(pool, parse_service(service("a", "dev")), prod)


def test_bgp_peer_fields_and_defaults() -> None:
    p = parse_bgp_peer(
        peer(
            "r1",
            holdTime="1m30s",
            passwordSecretRef={"namespace": "weir-system", "name": "bgp"},
            gracefulRestart={"enabled": True},
            nodeSelector={"matchExpressions": [{"key": "lb", "operator": "Exists"}]},
        )
    )
    assert (p.peer_address, p.peer_asn, p.local_asn, p.port) == ("172.16.0.254", 64512, 64513, 179)
    assert (p.hold_time, p.keepalive_time) == (90, 30)
    assert p.password_secret is not None and p.password_secret.key == "password"
    assert p.graceful_restart and p.restart_time == 120
    assert p.node_selector.matches({"lb": ""}) and not p.node_selector.matches({})
    d = parse_bgp_peer(peer("r2"))
    assert d.graceful_restart is False and d.password_secret is None
    assert d.node_selector.matches({})


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"peerAddress": "300.1.1.1"}, "is not an IP address"),
        ({"peerASN": 0}, "out of range [1, 4294967294]"),
        ({"peerASN": 4294967295}, "out of range"),
        ({"localASN": -5}, "out of range"),
        ({"localASN": None}, "spec.localASN: required"),
        ({"holdTime": 2}, "at least 3 seconds"),
        ({"holdTime": "soon"}, "not a duration"),
        ({"holdTime": 9, "keepaliveTime": 10}, "above holdTime"),
        ({"port": 0}, "spec.port"),
        ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "operator"),
        ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "at least one"),
        ({"passwordSecretRef": {"name": "x"}}, "namespace: required"),
        ({"gracefulRestart": {"enabled": True, "restartTime": 5000}}, "restartTime"),
    ],
)
def test_bgp_peer_errors(spec: dict[str, Any], needle: str) -> None:
    raw = peer("r1")
    raw["spec"].update(spec)
    with pytest.raises(ParseError) as info:
        parse_bgp_peer(raw)
    assert needle in str(info.value)


def test_weir_kinds_need_their_api_version() -> None:
    raw = peer("r1")
    raw["apiVersion"] = "metallb.io/v1beta2"
    with pytest.raises(ParseError, match=r"weir\.dev/v1alpha1"):
        parse_object(raw)


def test_bgp_advertisement() -> None:
    ad = parse_bgp_advertisement(
        weir(
            "BGPAdvertisement",
            "a",
            {
                "communities": ["65000:100", "NO-EXPORT", "65000:00100", "1:2:3"],
                "localPref": 200,
                "peers": ["r2", "r1"],
                "ipAddressPools": ["public"],
                "serviceSelectors": [{"matchLabels": {"app": "web"}}],
            },
        )
    )
    assert ad.communities == ("1:2:3", "65000:100", "no-export")
    assert ad.local_pref == 200 and ad.peers == ("r1", "r2") and ad.pools == ("public",)
    assert ad.service_selectors[0].matches({"app": "web"})
    for bad in ("65536:1", "abc", "1:2:3:4", ""):
        with pytest.raises(ParseError, match="communit"):
            parse_bgp_advertisement(weir("BGPAdvertisement", "a", {"communities": [bad]}))


def test_selector_semantics() -> None:
    sel = parse_selector(
        {
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "In", "values": ["x", "y"]},
                {"key": "c", "operator": "NotIn", "values": ["bad"]},
                {"key": "d", "operator": "DoesNotExist"},
            ],
        },
        "sel",
    )
    assert sel.matches({"a": "1", "b": "x"})
    assert sel.matches({"a": "1", "b": "y", "c": "good"})
    assert not sel.matches({"a": "1", "b": "x", "c": "bad"})
    assert not sel.matches({"a": "1", "b": "x", "d": ""})
    assert not sel.matches({"a": "2", "b": "x"})
    assert parse_selector({}, "s").matches({"anything": "goes"})
    with pytest.raises(ParseError, match="unknown fields"):
        parse_selector({"matchLabel": {"a": "1"}}, "s")


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("weir.dev/load-balancer=true", {"weir.dev/load-balancer": "true"},
         {"weir.dev/load-balancer": "false"}),
        ("a==1, b!=2", {"a": "1"}, {"a": "1", "b": "2"}),
        ("role in (lb, edge),!excluded", {"role": "edge"}, {"role": "edge", "excluded": ""}),
        ("role notin (lb),zone", {"zone": "a"}, {"zone": "a", "role": "lb"}),
        ("example.com/empty=", {"example.com/empty": ""}, {"example.com/empty": "x"}),
        ("", {}, None),
    ],
)  # fmt: skip
def test_selector_strings(text: str, matching: dict, not_matching: dict | None) -> None:
    sel = parse_selector_string(text)
    assert sel.matches(matching)
    if not_matching is not None:
        assert not sel.matches(not_matching)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a=b,", "'' is not a label requirement"),
        ("a in ()", "'a in \\(\\)': in needs label values"),
        ("a in (b", "is not a label requirement"),
        ("a b", "'a b' is not a label requirement"),
        ("-a=b", "is not a label requirement"),
        ("a=b c", "is not a label requirement"),
        ("a=" + "x" * 64, "is not a label requirement"),
        ("UPPER.example/a=b", "is not a label requirement"),
    ],
)
def test_bad_selector_strings(text: str, error: str) -> None:
    with pytest.raises(ParseError, match=error):
        parse_selector_string(text)


def test_object_ref_never_raises_and_defaults_namespaces() -> None:
    assert object_ref("junk") == ("", "", "")
    assert object_ref({"kind": "Service", "metadata": {"name": "a"}}) == ("Service", "default", "a")
    assert object_ref({"kind": "Node", "metadata": {"name": "n", "namespace": "x"}}) == (
        "Node",
        "",
        "n",
    )
    assert object_ref({"kind": 5, "metadata": []}) == ("", "default", "")


# Arbitrary JSON-like values: parsers answer with an object or a ParseError, nothing else.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(
    [
        "metadata", "spec", "status", "ports", "endpoints", "addressType", "name", "port",
        "addresses", "conditions", "ready", "peerAddress", "peerASN", "localASN", "cidrs",
        "ranges", "nodeSelector", "matchLabels", "matchExpressions", "data", "annotations",
        "labels", "loadBalancer", "ingress", "ip", "communities", "type", "protocol",
    ]
)  # fmt: skip
shaped = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(field_names, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(ALL_KINDS)), body=st.one_of(json_values, shaped))
def test_garbage_never_crashes_a_parser(kind: str, body: Any) -> None:
    obj = dict(body) if isinstance(body, dict) else {"spec": body}
    obj["kind"] = kind
    obj.setdefault("apiVersion", "weir.dev/v1alpha1")
    try:
        parse_object(obj)
    except ParseError as e:
        assert str(e)
    object_ref(obj)


def test_bgp_peer_bfd() -> None:
    raw = peer("r1")
    assert parse_bgp_peer(raw).bfd is None
    raw["spec"]["bfd"] = {}
    bfd = parse_bgp_peer(raw).bfd
    assert bfd is not None
    assert (bfd.transmit_ms, bfd.receive_ms, bfd.multiplier, bfd.required) == (300, 300, 3, False)
    raw["spec"]["bfd"] = {"enabled": False, "transmitInterval": 100}
    assert parse_bgp_peer(raw).bfd is None
    for bad, needle in (
        ({"transmitInterval": 5}, "spec.bfd.transmitInterval"),
        ({"detectMultiplier": 1}, "spec.bfd.detectMultiplier"),
        ({"required": "yes"}, "spec.bfd.required"),
    ):
        raw["spec"]["bfd"] = bad
        with pytest.raises(ParseError, match=needle):
            parse_bgp_peer(raw)


def test_bgp_advertisement_med_prepend_and_every_community_name() -> None:
    ad = parse_bgp_advertisement(
        weir("BGPAdvertisement", "a", {
            "med": 0, "asPathPrepend": 3,
            "communities": ["no-peer", "nopeer", "blackhole", "graceful-shutdown",
                            "no-advertise", "no-export-subconfed"],
        })
    )  # fmt: skip
    assert ad.med == 0 and ad.as_path_prepend == 3
    assert ad.communities == (
        "blackhole", "graceful-shutdown", "no-advertise", "no-export-subconfed", "no-peer",
    )  # fmt: skip
    assert parse_bgp_advertisement(weir("BGPAdvertisement", "a", {})).med is None
    with pytest.raises(ParseError, match=r"spec\.asPathPrepend"):
        parse_bgp_advertisement(weir("BGPAdvertisement", "a", {"asPathPrepend": 11}))
