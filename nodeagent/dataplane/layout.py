"""Python mirror of bpf/weir_maps.h: map names, value layouts and bit fields.

tests/dataplane/test_layout.py checks these against the types bcc builds from the C
header, field by field, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes as ct
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple


def _bpf_dir() -> Path:
    # bcc needs real files (the program #includes its headers from the same folder).
    found = files("weir.bpf")
    if not isinstance(found, Path):
        raise RuntimeError(f"weir.bpf is not on a filesystem ({found!r}): cannot compile")
    return found


BPF_DIR = _bpf_dir()
XDP_SOURCE = BPF_DIR / "weir_xdp.c"
XDP_FUNC = "weir_xdp"
COMMIT_FUNC = "weir_commit"
PROG_PIN = "prog_xdp"

# svc_value.word
SVC_BASE_MASK = 0xFFFFFFFF
SVC_SIZE_SHIFT = 32
SVC_SIZE_MASK = 0x1FFFF
SVC_F_HALF = 1 << 56
SVC_F_RANDOM = 1 << 57
SVC_F_CLIENT_IP = 1 << 58

BE_INDEX_BITS = 20
BE_INDEX_MASK = (1 << BE_INDEX_BITS) - 1
BE_GEN_MASK = (1 << 20) - 1
MAX_BACKENDS_LIMIT = 1 << BE_INDEX_BITS

SLOTS_PER_LINE = 16
CT_WAYS = 4
CT_FP_SHIFT = 40
CT_HANDLE_MASK = (1 << CT_FP_SHIFT) - 1
VIPF_WORDS = 1024
VIPF_HASH_MUL = 0x9E3779B1

DROP_REASONS = (
    "parse",
    "fragment",
    "table_empty",
    "no_backend",
    "too_big",
    "encap",
    "invalid",
)
CT_EVENTS = ("evict", "guarded", "untracked", "full")
CT_TICK_SHIFT = 4
FRAG_ENTRIES = 16384  # datagrams whose fragments are being forwarded (LRU)
CT_MIN_AGE = 2
# frames for a VIP passed to the kernel untouched because they are not addressed to us
PASS_REASONS = ("other_host", "multicast")

COMMIT_FLIP = 1
COMMIT_CONFIG = 2
COMMIT_BACKEND = 3
COMMIT_MAX_OPS = 128
CONFIG_NODE_MAC = 0
CFG_SAMPLE_SHIFT = 48  # config.node_mac bits 48..63: the flow log's sampling rate
FLOW_SAMPLE_MAX = (1 << 16) - 1
CONFIG_SEED = 1
CONFIG_ENCAP = 2
CONFIG_CT_KEY = 3
CONFIG_CT_GUARD = 4
CFG_ENCAP_PORT_SHIFT = 32
CFG_ENCAP_MTU_SHIFT = 48
BE_F_ENCAP = 1
# outer IPv4 + UDP + Weir header (bpf/weir_encap.h)
ENCAP_OVERHEAD = 20 + 8 + 8

STRATEGY_MAGLEV = 1
STRATEGY_RANDOM = 2
SVC_ID_LEN = 64


class SvcKey(ct.Structure):
    _fields_ = [
        ("vip_be", ct.c_uint32),
        ("port_be", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class SvcValue(ct.Structure):
    _fields_ = [("word", ct.c_uint64), ("index", ct.c_uint32), ("pad", ct.c_uint32)]


class Backend(ct.Structure):
    _fields_ = [
        ("handle", ct.c_uint64),
        ("svc_key", SvcKey),
        ("mac", ct.c_uint8 * 6),
        ("port_be", ct.c_uint16),
        ("addr_be", ct.c_uint32),
        ("svc", ct.c_uint32),
        ("node_be", ct.c_uint32),
        ("flags", ct.c_uint32),
    ]


class SlotLine(ct.Structure):
    _fields_ = [("id", ct.c_uint32 * SLOTS_PER_LINE)]


class CtClient(ct.Structure):
    _fields_ = [("saddr_be", ct.c_uint32), ("sport_be", ct.c_uint16), ("seen", ct.c_uint16)]


class CtBucket(ct.Structure):
    _fields_ = [("way", ct.c_uint64 * CT_WAYS), ("client", CtClient * CT_WAYS)]


class Config(ct.Structure):
    _fields_ = [
        ("node_mac", ct.c_uint64),
        ("seed", ct.c_uint64),
        ("encap", ct.c_uint64),
        ("ct_key", ct.c_uint64),
        ("ct_guard", ct.c_uint64),
    ]


class FragKey(ct.Structure):
    _fields_ = [
        ("saddr_be", ct.c_uint32),
        ("daddr_be", ct.c_uint32),
        ("id_be", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class FragValue(ct.Structure):
    _fields_ = [("handle", ct.c_uint64), ("entropy", ct.c_uint32), ("pad", ct.c_uint32)]


class CtGuardState(ct.Structure):
    _fields_ = [("start_ns", ct.c_uint64), ("count", ct.c_uint64)]


class Counters(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64), ("new_flows", ct.c_uint64)]


class SvcHalf(ct.Structure):
    _fields_ = [("base", ct.c_uint32), ("size", ct.c_uint32), ("tag", ct.c_uint8 * 16)]


class SvcMeta(ct.Structure):
    _fields_ = [
        ("id", ct.c_char * SVC_ID_LEN),
        ("half", SvcHalf * 2),
        ("strategy", ct.c_uint32),
        ("used", ct.c_uint32),
    ]


class BeMeta(ct.Structure):
    _fields_ = [("gen", ct.c_uint32), ("halves", ct.c_uint32)]


# --- the flow log: a ring buffer of FlowRecord, pinned beside the maps ------------------
FLOW_LOG = "flow_log"
FLOW_HOW = ("none", "maglev", "affinity", "random", "conntrack", "fragment")
FLOW_F_ICMP = 1
FLOW_F_FIRST_FRAG = 2
FLOW_F_UNTRACKED = 4


class FlowRecord(ct.Structure):
    _fields_ = [
        ("time_ns", ct.c_uint64),
        ("handle", ct.c_uint64),
        ("saddr_be", ct.c_uint32),
        ("daddr_be", ct.c_uint32),
        ("sport_be", ct.c_uint16),
        ("dport_be", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("how", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("drop", ct.c_uint8),
        ("slot", ct.c_uint32),
        ("action", ct.c_uint32),
    ]


class CommitOp(ct.Structure):
    _fields_ = [
        ("op", ct.c_uint32),
        ("done", ct.c_uint32),
        ("key", ct.c_uint64),
        ("value", ct.c_uint64),
    ]


LAYOUT_VERSION = 4  # bpf/weir_maps.h WEIR_LAYOUT_VERSION

# name -> (key type, value type) of every pinned map
MAPS: dict[str, tuple[type, type]] = {
    "layout": (ct.c_uint32, ct.c_uint64),
    "services": (SvcKey, SvcValue),
    "backends": (ct.c_uint32, Backend),
    "slots": (ct.c_uint32, SlotLine),
    "conntrack": (ct.c_uint32, CtBucket),
    "config": (ct.c_uint32, Config),
    "vipf": (ct.c_uint32, ct.c_uint64),
    "vips": (ct.c_uint32, ct.c_uint32),
    "svc_stats": (ct.c_uint32, Counters),
    "be_stats": (ct.c_uint32, Counters),
    "drop_stats": (ct.c_uint32, Counters),
    "pass_stats": (ct.c_uint32, Counters),
    "ct_stats": (ct.c_uint32, Counters),
    "ct_guard": (ct.c_uint32, CtGuardState),
    "flow_skip": (ct.c_uint32, ct.c_uint64),
    "frags": (FragKey, FragValue),
    "svc_meta": (ct.c_uint32, SvcMeta),
    "be_meta": (ct.c_uint32, BeMeta),
}


def word_of(base: int, size: int, half: int, random: bool, client_ip: bool = False) -> int:
    word = (base & SVC_BASE_MASK) | ((size & SVC_SIZE_MASK) << SVC_SIZE_SHIFT)
    if half:
        word |= SVC_F_HALF
    if random:
        word |= SVC_F_RANDOM
    if client_ip:
        word |= SVC_F_CLIENT_IP
    return word


class WordFields(NamedTuple):
    base: int
    size: int
    half: int
    random: bool
    client_ip: bool


def word_fields(word: int) -> WordFields:
    """The fields of a service word."""
    return WordFields(
        word & SVC_BASE_MASK,
        (word >> SVC_SIZE_SHIFT) & SVC_SIZE_MASK,
        1 if word & SVC_F_HALF else 0,
        bool(word & SVC_F_RANDOM),
        bool(word & SVC_F_CLIENT_IP),
    )


def handle_of(index: int, gen: int) -> int:
    return (gen << BE_INDEX_BITS) | index


# --- the backend node's maps (bpf/weir_nat_maps.h) -------------------------------------
TC_SOURCE = BPF_DIR / "weir_tc.c"
TC_INGRESS_FUNC = "weir_tc_ingress"
TC_EGRESS_FUNC = "weir_tc_egress"
NAT_LAYOUT_VERSION = 1
NAT_EVENTS = ("decap", "reverse", "mss_clamped")
NAT_DROPS = ("not_lb", "header", "unknown", "decap_failed", "fragment")
NAT_FRAGS = 16384


class NatConfig(ct.Structure):
    _fields_ = [
        ("node_be", ct.c_uint32),
        ("port_be", ct.c_uint16),
        ("mss", ct.c_uint16),
        ("layout", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class NatBackendKey(ct.Structure):
    _fields_ = [
        ("vip_be", ct.c_uint32),
        ("addr_be", ct.c_uint32),
        ("vport_be", ct.c_uint16),
        ("port_be", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    ]


class NatBackend(ct.Structure):
    _fields_ = [("index", ct.c_uint32), ("pad", ct.c_uint32)]


class NatVip(ct.Structure):
    _fields_ = [("vip_be", ct.c_uint32), ("vport_be", ct.c_uint16), ("pad", ct.c_uint16)]


class NatFlowKey(ct.Structure):
    _fields_ = [
        ("addr_be", ct.c_uint32),
        ("client_be", ct.c_uint32),
        ("port_be", ct.c_uint16),
        ("cport_be", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    ]


NAT_MAPS: dict[str, tuple[type, type]] = {
    "nat_config": (ct.c_uint32, NatConfig),
    "lb_nodes": (ct.c_uint32, ct.c_uint32),
    "local_backends": (NatBackendKey, NatBackend),
    "nat_flows": (NatFlowKey, NatVip),
    "nat_frags": (FragKey, ct.c_uint32),
    "nat_events": (ct.c_uint32, Counters),
    "nat_drops": (ct.c_uint32, Counters),
    "be_nat_stats": (ct.c_uint32, Counters),
}
