"""Helpers for the node-plane tests: cluster snapshots, a throwaway CA, a running server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from weir.common.pb import pb, pb_grpc
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.plane.server import ServerTLS, start_server
from weir.controller.plane.servicer import NodePlane
from weir.nodeagent.controller_client import ControllerClient, Handler, Update


def service(vip: str, port: int, backends: list[tuple[str, int]], name: str = "") -> pb.Service:
    sid = f"{vip}:{port}/TCP"
    return pb.Service(
        id=sid,
        vip=vip,
        port=port,
        protocol=pb.PROTOCOL_TCP,
        strategy=pb.STRATEGY_MAGLEV,
        maglev_table_size=251,
        backends=[
            pb.Backend(address=a, port=p, weight=1, ready=True, serving=True)
            for a, p in sorted(backends)
        ],
        service=name or f"default/svc-{port}",
    )


def cluster(
    services: list[pb.Service],
    bgp: dict[str, pb.BGPConfig] | None = None,
    seed: int = 7,
    *,
    lb: Iterable[str] = (),
    configs: dict[str, pb.NodeConfig] | None = None,
) -> pb.ClusterSnapshot:
    """A cluster snapshot whose lb nodes have the load-balancer role (their views carry the
    services), and whose nodes in configs have those NodeConfigs."""
    views = {node: pb.NodeConfig() for node in lb}
    for node, config in (configs or {}).items():
        views.setdefault(node, pb.NodeConfig()).MergeFrom(config)
    for node in lb:
        views[node].load_balancer = True
    return pb.ClusterSnapshot(
        maglev_seed=seed,
        services=sorted(services, key=lambda s: s.id),
        nodes=[pb.NodeBGP(node=n, bgp=c) for n, c in sorted((bgp or {}).items())],
        node_views=[pb.NodeView(node=n, config=c) for n, c in sorted(views.items())],
    )


def bgp_config(asn: int, peer: str, prefixes: list[str], password: str = "") -> pb.BGPConfig:
    return pb.BGPConfig(
        local_asn=asn,
        router_id="10.0.0.1",
        peers=[pb.BGPPeer(name="r1", address=peer, asn=65000, port=179, password=password)],
        advertisements=[pb.Advertisement(prefix=p) for p in sorted(prefixes)],
    )


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


class ThrowawayCA:
    """A throwaway CA issuing server and node certificates into a directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir test CA")])
        self._name = name
        self._cert = (
            self._builder(name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = directory / "ca.pem"
        self.ca.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey):
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def issue(self, common_name: str, dns: list[str] = (), ips: list[str] = ()) -> Cert:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = self._builder(subject, key.public_key())
        sans = [x509.DNSName(d) for d in dns] + [
            x509.IPAddress(ipaddress.ip_address(i)) for i in ips
        ]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        out = Cert(self.dir / f"{common_name}.pem", self.dir / f"{common_name}-key.pem")
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return out


class Recorder:
    """An agent handler that records updates and acks them (optionally with errors)."""

    def __init__(self, ack: Callable[[Update], pb.Ack] | None = None) -> None:
        self.updates: list[Update] = []
        self._ack = ack

    async def __call__(self, update: Update) -> pb.Ack:
        self.updates.append(update)
        return self._ack(update) if self._ack else pb.Ack()

    def kinds(self) -> list[tuple[int, int, bool]]:
        """(version, base_version, full) of each update received."""
        return [(u.version, u.base_version, u.full) for u in self.updates]


class Plane:
    """A store, a NodePlane and its gRPC server on a free loopback port, plus agents."""

    def __init__(self, tls: ServerTLS | None = None, **plane_args: Any) -> None:
        self.store = SnapshotStore()
        self.plane = NodePlane(self.store, **plane_args)
        self._tls = tls
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Plane:
        self.server = await start_server(self.plane, "127.0.0.1:0", self._tls)
        self.target = f"127.0.0.1:{self.server.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.stop(grace=1)

    def agent(self, node: str, handler: Handler | None = None, **kw: Any) -> ControllerClient:
        """Start a ControllerClient for node (stopped at exit)."""
        client = ControllerClient(
            self.target, node, handler or Recorder(), backoff_initial=0.05, backoff_max=0.5, **kw
        )
        self._tasks.append(asyncio.create_task(client.run(), name=f"agent-{node}"))
        return client

    async def stop_agent(self, client: ControllerClient) -> None:
        """Stop one agent and wait until the controller saw its stream end."""
        for task in self._tasks:
            if task.get_name() == f"agent-{client.node}" and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.plane.wait_for(lambda: not self.info(client.node).connected)

    def info(self, node: str) -> pb.AgentInfo:
        agents = {a.node: a for a in self.plane.list_agents().agents}
        return agents.get(node, pb.AgentInfo())

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target)


async def raw_hello(
    stub: pb_grpc.NodePlaneStub, hello: pb.Hello
) -> tuple[grpc.aio.StreamStreamCall, pb.ControllerMessage]:
    """Open a Connect stream by hand and return it with the first controller message."""
    call = stub.Connect()
    await call.write(pb.AgentMessage(hello=hello))
    first = await call.read()
    return call, first
