"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

A candidate takes the Lease when it is free or expired, the leader renews it every retry
period, and a leader that could not renew for the renew deadline stops leading (its work is
cancelled) before anyone else may take over. Defaults: 15 s lease duration, 10 s renew
deadline, 2 s retry period.

When is a Lease expired? client-go measures from the moment the candidate itself last saw the
record change, which never trusts another machine's clock but lets a takeover come up to a
retry period or two after the lease duration. Here a Lease is also expired once its renewTime
plus its duration has passed by the candidate's clock, and a standby wakes exactly then, so a
dead leader is replaced within the lease duration of its last renewal. That trusts the clocks
of the replicas to agree within lease duration - renew deadline (5 s by default): a leader
that cannot renew stops leading at its renew deadline, that much before its Lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.controller.kube.api import LEASES, ApiError, KubeAPI

log = get_logger("weir.leader")

JITTER = 1.2  # as client-go: the retry period may stretch up to this factor for candidates


def default_identity() -> str:
    """$POD_NAME (else the host name) with a random suffix: unique per process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "weir-controller"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not self.lease_duration > self.renew_deadline > self.retry_period * JITTER > 0:
            raise ValueError(
                "need lease duration > renew deadline > retry period * 1.2 > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )


def micro_time(at: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fraction digits."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class LeaderElector:
    def __init__(self, api: KubeAPI, config: LeaseConfig) -> None:
        self.api = api
        self.config = config
        self.is_leader = False  # True while lead() runs
        self._holding = False  # we hold the Lease (released when run() is cancelled)
        self._lease: dict[str, Any] | None = None  # the Lease as last read or written
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0  # monotonic time the spec last changed under our eyes

    @property
    def holder(self) -> str:
        """The Lease holder as last seen ("" when free or not read yet)."""
        return str((self._observed_spec or {}).get("holderIdentity") or "")

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: wait for the Lease, run lead() while holding it, cancel it when the Lease
        is lost. Cancelling run() releases a held Lease so a standby takes over at once.
        When lead() returns, run() returns; when it raises, run() raises."""
        try:
            while True:
                await self._acquire()
                if await self._lead(lead):
                    return
        finally:
            if self._holding:
                self._holding = False
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.config.retry_period):
                        await self._release()

    # --- phases -------------------------------------------------------------------------------

    async def _acquire(self) -> None:
        log.info("waiting for the lease", lease=self._where, identity=self.config.identity)
        # Polling the remote Lease (as client-go does): there is no local event to await.
        while not await self._bounded_try():  # noqa: ASYNC110
            await asyncio.sleep(self._next_try_in())
        self._holding = self.is_leader = True
        log.info("became leader", lease=self._where, identity=self.config.identity)

    async def _lead(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Lead until the Lease is lost (False) or lead() ends (True, or its exception)."""
        cfg = self.config
        work = asyncio.create_task(lead(), name="lead")
        renewed = time.monotonic()
        try:
            while True:
                # Renew every retry period, and wake at the renew deadline at the latest.
                until_deadline = renewed + cfg.renew_deadline - time.monotonic()
                await asyncio.wait((work,), timeout=max(0.0, min(cfg.retry_period, until_deadline)))
                if work.done():
                    work.result()  # lead() failed: raise its exception
                    return True
                left = renewed + cfg.renew_deadline - time.monotonic()
                ok = False
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            ok = await self._try()
                if ok:
                    renewed = time.monotonic()
                elif self._held_by_other() or time.monotonic() - renewed >= cfg.renew_deadline:
                    log.warning("lost the lease", lease=self._where, identity=cfg.identity)
                    self._holding = False
                    return False
        finally:
            self.is_leader = False
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    # --- one attempt ----------------------------------------------------------------------------

    async def _bounded_try(self) -> bool:
        """_try, giving up on a hung request after the renew deadline."""
        try:
            async with asyncio.timeout(self.config.renew_deadline):
                return await self._try()
        except TimeoutError:
            log.warning("lease request timed out", lease=self._where)
            return False

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease; True when we hold it now."""
        cfg = self.config
        try:
            if self.is_leader and self._lease is not None:
                with contextlib.suppress(ApiError):  # the fast path; conflicts read again
                    return self._took(
                        await self.api.replace(LEASES, cfg.namespace, self._renewed())
                    )
            try:
                lease = await self.api.get(LEASES, cfg.namespace, cfg.name)
            except ApiError as e:
                if e.status != 404:
                    raise
                return self._took(await self.api.create(LEASES, cfg.namespace, self._fresh()))
            self._observe(lease)
            if self._held_by_other() and not self._expired():
                return False
            return self._took(await self.api.replace(LEASES, cfg.namespace, self._renewed()))
        except ApiError as e:
            if e.status != 409:
                log.warning("lease request failed", lease=self._where, error=str(e))
            return False
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            log.warning("lease request failed", lease=self._where, error=repr(e))
            return False

    def _took(self, lease: dict[str, Any]) -> bool:
        self._observe(lease)
        return True

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = dict(lease.get("spec") or {})
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = time.monotonic()
        self._lease = lease

    def _held_by_other(self) -> bool:
        holder = (self._observed_spec or {}).get("holderIdentity") or ""
        return holder not in ("", self.config.identity)

    def _duration(self) -> float:
        dur = (self._observed_spec or {}).get("leaseDurationSeconds")
        return float(dur) if isinstance(dur, int) and dur > 0 else self.config.lease_duration

    def _expires_in(self) -> float:
        """Seconds until the observed Lease expires (<= 0: expired)."""
        by_observation = self._observed_at + self._duration() - time.monotonic()
        renewed = _parse_time((self._observed_spec or {}).get("renewTime"))
        if renewed is None:
            return by_observation
        by_record = (renewed - datetime.now(UTC)).total_seconds() + self._duration()
        return min(by_observation, by_record)

    def _expired(self) -> bool:
        return self._expires_in() <= 0

    def _next_try_in(self) -> float:
        retry = self.config.retry_period * random.uniform(1.0, JITTER)
        if self._held_by_other():
            return max(0.01, min(retry, self._expires_in() + 0.01))
        return retry

    # --- Lease bodies ---------------------------------------------------------------------------

    def _fresh(self) -> dict[str, Any]:
        now = micro_time(datetime.now(UTC))
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": {
                "holderIdentity": self.config.identity,
                "leaseDurationSeconds": round(self.config.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _renewed(self) -> dict[str, Any]:
        assert self._lease is not None
        lease = dict(self._lease)
        spec = dict(lease.get("spec") or {})
        now = micro_time(datetime.now(UTC))
        if spec.get("holderIdentity") != self.config.identity:
            transitions = spec.get("leaseTransitions")
            spec["leaseTransitions"] = (transitions if isinstance(transitions, int) else 0) + 1
            spec["acquireTime"] = now
        spec.update(
            holderIdentity=self.config.identity,
            leaseDurationSeconds=round(self.config.lease_duration),
            renewTime=now,
        )
        lease["spec"] = spec
        return lease

    async def _release(self) -> None:
        """Give the Lease up (holder cleared, duration 1 s), as client-go's ReleaseOnCancel."""
        if self._lease is None:
            return
        lease = dict(self._lease)
        spec = dict(lease.get("spec") or {})
        now = micro_time(datetime.now(UTC))
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
        lease["spec"] = spec
        await self.api.replace(LEASES, self.config.namespace, lease)
        log.info("released the lease", lease=self._where)

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"
