"""Per-node BGP settings in the cluster snapshot: peers, ASNs, router ids, advertisements."""

from __future__ import annotations

from typing import Any

from weir.common.pb import pb
from weir.controller.core.reduce import reduce

from tests.controller.reduce_support import (
    FILES,
    endpoint_slice,
    errors_for,
    node,
    peer,
    run,
    service,
    state_of,
    weir,
)
from tests.kube.builders import secret

LB = {"nodeSelector": {"matchLabels": {"lb": "yes"}}}


def base() -> list[Any]:
    return [
        service("web", ips=["192.0.2.1", "2001:db8::1"], labels={"app": "web"}),
        endpoint_slice("web-4", "web", ["10.0.0.1"]),
        endpoint_slice("web-6", "web", ["fd00::1"], family="IPv6"),
        service("db", ips=["192.0.2.2"], labels={"app": "db"}),
        endpoint_slice("db-1", "db", ["10.0.0.2"]),
        service("empty", ips=["192.0.2.3"]),  # no backends: never announced
        endpoint_slice("empty-1", "empty", [("10.0.0.3", False, False, True)]),
        node("lb-1", "172.16.0.1", lb="yes"),
        node("lb-2", "172.16.0.2", lb="yes"),
        node("worker-1", "172.16.0.3"),
    ]


def bgp_of(result: Any) -> dict[str, pb.BGPConfig]:
    return {n.node: n.bgp for n in result.cluster.nodes}


def ads(cfg: pb.BGPConfig) -> list[tuple[str, tuple[str, ...], int, tuple[str, ...]]]:
    return [
        (a.prefix, tuple(a.communities), a.local_preference, tuple(a.peers))
        for a in cfg.advertisements
    ]


def test_selected_nodes_get_peers_and_announce_vips_with_backends() -> None:
    result = run(
        [
            *base(),
            peer("tor-b", address="172.16.0.253", holdTime="9s", keepaliveTime=3, **LB),
            peer(
                "tor-a",
                passwordSecretRef={"namespace": "weir", "name": "bgp", "key": "pw"},
                gracefulRestart={"enabled": True, "restartTime": 60},
                port=1179,
                **LB,
            ),
            secret("bgp", "weir", pw="s3cret"),
        ]
    )
    assert result.errors == ()
    nodes = bgp_of(result)
    assert list(nodes) == ["lb-1", "lb-2"]  # sorted; worker-1 is not selected
    cfg = nodes["lb-2"]
    assert (cfg.local_asn, cfg.router_id) == (64513, "172.16.0.2")
    assert [p.name for p in cfg.peers] == ["tor-a", "tor-b"]
    a, b = cfg.peers
    assert (a.address, a.asn, a.port, a.password) == ("172.16.0.254", 64512, 1179, "s3cret")
    assert (a.graceful_restart, a.graceful_restart_time_seconds) == (True, 60)
    assert (a.hold_time_seconds, a.keepalive_time_seconds) == (90, 30)
    assert (b.hold_time_seconds, b.keepalive_time_seconds, b.password) == (9, 3, "")
    assert not b.graceful_restart and b.graceful_restart_time_seconds == 0
    # Every Weir VIP with a usable backend, /32 or /128, to every peer.
    assert ads(cfg) == [
        ("192.0.2.1/32", (), 0, ()),
        ("192.0.2.2/32", (), 0, ()),
        ("2001:db8::1/128", (), 0, ()),
    ]
    assert ads(nodes["lb-1"]) == ads(cfg)


def test_announcement_follows_usable_backends() -> None:
    objs = [*base(), peer("tor", **LB)]
    objs[4] = endpoint_slice("db-1", "db", [("10.0.0.2", False, True, False)])  # not ready
    assert "192.0.2.2/32" not in [a[0] for a in ads(bgp_of(run(objs))["lb-1"])]
    objs[4] = endpoint_slice("db-1", "db", [("10.0.0.2", False, True, True)])  # fallback
    assert "192.0.2.2/32" in [a[0] for a in ads(bgp_of(run(objs))["lb-1"])]


def test_invalid_peers_are_reported_and_skipped() -> None:
    state = state_of(
        [
            *base(),
            peer("good", **LB),
            peer("bad-address", address="172.16.0.999", **LB),
            peer("bad-asn", asn=4294967295, **LB),
            peer("bad-local-asn", local=0, **LB),
            peer("nobody", nodeSelector={"matchLabels": {"lb": "no-such-node"}}),
            peer(
                "no-secret",
                address="172.16.0.250",
                **LB,
                passwordSecretRef={"namespace": "weir", "name": "missing"},
            ),
            peer(
                "no-key",
                address="172.16.0.251",
                **LB,
                passwordSecretRef={"namespace": "weir", "name": "bgp", "key": "nope"},
            ),
            secret("bgp", "weir", password="x"),
        ]
    )
    result = reduce(state.inputs(), FILES)
    parse_errors = {e.name: e.message for e in state.errors()}
    assert set(parse_errors) == {"bad-address", "bad-asn", "bad-local-asn"}
    assert "'172.16.0.999' is not an IP address" in parse_errors["bad-address"]
    assert "4294967295 is out of range [1, 4294967294]" in parse_errors["bad-asn"]
    assert errors_for(result, "BGPPeer", "nobody") == ["nodeSelector matches no Node; peer skipped"]
    assert errors_for(result, "BGPPeer", "no-secret") == [
        "Secret weir/missing not found; peer skipped"
    ]
    assert errors_for(result, "BGPPeer", "no-key") == [
        "Secret weir/bgp has no key 'nope'; peer skipped"
    ]
    for cfg in bgp_of(result).values():
        assert [p.name for p in cfg.peers] == ["good"]
    assert len(result.cluster.services) == 4  # services unaffected by bad peers


def test_per_node_conflicts_and_missing_router_id() -> None:
    result = run(
        [
            *base(),
            node("lb-3", None, lb="yes"),  # no IPv4 address: no router id
            peer("a", **LB),
            peer("b", address="172.16.0.253", local=65000, **LB),  # other local ASN
            peer("c", **LB),  # same address as a
            peer(
                "only-lb-1",
                address="172.16.0.252",
                nodeSelector={"matchLabels": {"kubernetes.io/hostname": "lb-1"}},
            ),
        ]
    )
    result_nodes = bgp_of(result)
    assert list(result_nodes) == ["lb-1", "lb-2"]
    assert [p.name for p in result_nodes["lb-2"].peers] == ["a"]
    assert errors_for(result, "Node", "lb-3") == [
        "no IPv4 address for the BGP router id; BGP not set up"
    ]
    assert any("localASN 65000 differs from 64513" in m for m in errors_for(result, "BGPPeer", "b"))
    assert any("already used by peer a" in m for m in errors_for(result, "BGPPeer", "c"))


def test_node_selector_on_hostname_label() -> None:
    objs = [*base(), peer("one", nodeSelector={"matchLabels": {"role": "edge"}})]
    objs.append(node("edge", "172.16.0.9", role="edge"))
    nodes = bgp_of(run(objs))
    assert list(nodes) == ["edge"] and nodes["edge"].router_id == "172.16.0.9"


def test_advertisements_select_by_pool_service_and_peer() -> None:
    objs = [
        *base(),
        # iBGP peers: local preference is theirs.
        peer("tor-a", asn=64513, **LB),
        peer("tor-b", address="172.16.0.253", asn=64513, **LB),
        weir("LoadBalancerIPPool", "public", {"cidrs": ["192.0.2.0/31"]}, exposure="public"),
        weir("LoadBalancerIPPool", "v6", {"cidrs": ["2001:db8::/64"]}),
        weir("BGPAdvertisement", "public", {
            "ipAddressPoolSelectors": [{"matchLabels": {"exposure": "public"}}],
            "communities": ["65000:100"], "localPref": 100,
        }),
        weir("BGPAdvertisement", "web-to-b", {
            "serviceSelectors": [{"matchLabels": {"app": "web"}}],
            "communities": ["65000:200"], "localPref": 300, "peers": ["tor-b"],
        }),
        weir("BGPAdvertisement", "v6", {"ipAddressPools": ["v6"]}),
    ]  # fmt: skip
    result = run(objs)
    assert result.errors == ()
    # 192.0.2.1 (web): public to both peers, web-to-b adds to tor-b.
    # 192.0.2.2 (db): not in the public pool (/31 holds .0 and .1), and not web: not announced.
    # 2001:db8::1 (web): the v6 pool's advertisement to both, web-to-b to tor-b.
    assert ads(bgp_of(result)["lb-1"]) == [
        ("192.0.2.1/32", ("65000:100",), 100, ("tor-a",)),
        ("192.0.2.1/32", ("65000:100", "65000:200"), 300, ("tor-b",)),
        ("2001:db8::1/128", (), 0, ("tor-a",)),
        ("2001:db8::1/128", ("65000:200",), 300, ("tor-b",)),
    ]


def test_local_pref_is_refused_on_ebgp_and_prepend_on_ibgp() -> None:
    objs = [
        *base(),
        peer("ebgp", **LB),  # peer ASN 64512, local 64513
        peer("ibgp", address="172.16.0.253", asn=64513, **LB),
        weir("BGPAdvertisement", "steer", {
            "serviceSelectors": [{"matchLabels": {"app": "web"}}],
            "localPref": 200, "med": 50, "asPathPrepend": 2,
        }),
    ]  # fmt: skip
    result = run(objs)
    cfg = bgp_of(result)["lb-1"]
    by_peer = {tuple(a.peers): a for a in cfg.advertisements if a.prefix == "192.0.2.1/32"}
    ebgp, ibgp = by_peer[("ebgp",)], by_peer[("ibgp",)]
    assert (ebgp.local_preference, ebgp.med, ebgp.as_path_prepend) == (0, 50, 2)
    assert (ibgp.local_preference, ibgp.med, ibgp.as_path_prepend) == (200, 50, 0)
    assert list(ebgp.sources) == ["steer"]
    errors = errors_for(result, "BGPAdvertisement", "steer")
    assert any("localPref 200 applies to iBGP peers only" in m and "ebgp" in m for m in errors)
    assert any("asPathPrepend applies to eBGP peers only" in m and "ibgp" in m for m in errors)


def test_a_refused_attribute_is_reported_before_any_vip_goes_through_it() -> None:
    """The refusal is about the advertisement and the peers it selects: it shows as soon as
    the object exists, once per peer, not only once a Service matches it."""
    objs = [
        *base(),
        peer("ebgp", **LB),
        peer("ibgp", address="172.16.0.253", asn=64513, **LB),
        peer("unused", address="172.16.0.252", nodeSelector={"matchLabels": {"lb": "no"}}),
        weir("BGPAdvertisement", "nothing-yet", {
            "serviceSelectors": [{"matchLabels": {"app": "none"}}], "localPref": 200,
        }),
        weir("BGPAdvertisement", "inside", {"localPref": 300, "peers": ["ibgp"]}),
    ]  # fmt: skip
    result = run(objs)
    assert errors_for(result, "BGPAdvertisement", "nothing-yet") == [
        "localPref 200 applies to iBGP peers only; not sent to the eBGP peer ebgp (use med or "
        "asPathPrepend to steer an eBGP peer)"
    ]
    assert errors_for(result, "BGPAdvertisement", "inside") == []


def test_med_unset_is_not_sent_and_the_lowest_med_wins() -> None:
    objs = [
        *base(),
        peer("tor", **LB),
        weir("BGPAdvertisement", "plain", {"serviceSelectors": [{"matchLabels": {"app": "db"}}]}),
        weir("BGPAdvertisement", "a", {"serviceSelectors": [{"matchLabels": {"app": "web"}}],
                                       "med": 30}),
        weir("BGPAdvertisement", "b", {"serviceSelectors": [{"matchLabels": {"app": "web"}}],
                                       "med": 10}),
    ]  # fmt: skip
    ads_ = {a.prefix: a for a in bgp_of(run(objs))["lb-1"].advertisements}
    assert not ads_["192.0.2.2/32"].HasField("med")
    assert ads_["192.0.2.1/32"].med == 10 and list(ads_["192.0.2.1/32"].sources) == ["a", "b"]


def test_bfd_settings_reach_the_node() -> None:
    objs = [
        *base(),
        peer("fast", bfd={"transmitInterval": 100, "receiveInterval": 200, "required": True},
             **LB),
        peer("plain", address="172.16.0.253", **LB),
    ]  # fmt: skip
    peers = {p.name: p for p in bgp_of(run(objs))["lb-1"].peers}
    assert peers["fast"].bfd == pb.BFD(
        min_transmit_ms=100, min_receive_ms=200, detect_multiplier=3, required=True
    )
    assert not peers["plain"].HasField("bfd")
