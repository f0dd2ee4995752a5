"""Traffic in a topology, driven from the harness: backends (weir.lab.httpd) and clients
(weir.lab.client) started in hosts, their results read back as typed records.

A thread reads each child's output as it comes, so a child never blocks on a full pipe and
every wait here is bounded.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from weir.lab.bulk import Transfer
from weir.lab.client import Outcome, Proto, RateSummary, TalkReport, Target
from weir.lab.netns import Host, LabError
from weir.lab.wait import wait_until


class Lines:
    """A child's output stream, line by line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line; None at the end of the output or when none came in time."""
        if self._eof:
            return None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        self._eof = line is None
        return line

    def json(self, timeout: float, what: str) -> Any:
        line = self.next(timeout)
        if line is None:
            raise LabError(f"{what}: no answer within {timeout:g} s")
        return json.loads(line)


def serve(host: Host, name: str, port: int = 80, *, proto: Proto = "http") -> subprocess.Popen:
    """A backend (weir.lab.httpd) in host answering with name; returns once it listens."""
    args = [sys.executable, "-m", "weir.lab.httpd", "--name", name, "--port", str(port)]
    return _started(host, args + ["--lines"] * (proto == "lines"), name)


def serve_bulk(
    host: Host, port: int, udp_port: int | None = None, udp_bind: str = "0.0.0.0"
) -> subprocess.Popen:
    """A weir.lab.bulk server in host (and its UDP echo); returns once it listens."""
    args = [sys.executable, "-m", "weir.lab.bulk", "serve", "--port", str(port)]
    if udp_port is not None:
        args += ["--udp-port", str(udp_port), "--udp-bind", udp_bind]
    return _started(host, args, f"bulk server in {host.name}")


def _started(host: Host, args: list[str], what: str) -> subprocess.Popen:
    proc = host.popen(args, stdout=subprocess.PIPE)
    line = Lines(proc.stdout).next(15)  # type: ignore[arg-type]
    if not line or "serving" not in line:
        raise LabError(f"{what} did not start")
    return proc


def bulk(host: Host, direction: str, vip: str, port: int, size: int, seed: int = 1) -> Transfer:
    """One upload, download or echoed datagram of size bytes through vip:port, checked
    (weir.lab.bulk)."""
    out = host.run(
        [sys.executable, "-m", "weir.lab.bulk", direction, "--vip", vip, "--port", str(port),
         "--bytes", str(size), "--seed", str(seed)],
        check=False, timeout=120,
    )  # fmt: skip
    return Transfer(**json.loads(out))


@dataclass
class Client:
    """A weir.lab.client process in a host, and its output lines."""

    proc: subprocess.Popen
    lines: Lines

    @classmethod
    def start(
        cls, host: Host, target: Target, mode: str, *args: str, stdin: bool = False
    ) -> Client:
        proc = host.popen(
            [sys.executable, "-m", "weir.lab.client", mode, "--vip", target.vip,
             "--port", str(target.port), "--proto", target.proto, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        return cls(proc, Lines(proc.stdout))  # type: ignore[arg-type]

    def ask(self, command: str, timeout: float) -> Any:
        """Send a command line (hold, talk); its JSON answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()
        return self.lines.json(timeout, f"client {command}")

    def end(self) -> None:
        """Close its stdin (hold, talk: the end) and wait for it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def burst(
    host: Host,
    target: Target,
    *,
    count: int = 0,
    sports: Iterable[int] = (),
    sport_base: int = 0,
    concurrency: int = 16,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """New connections: count of them (from sport_base on, or any port), or one from each of
    sports. Returns the outcomes in the order they finished."""
    sports = list(sports)
    args = ["--count", str(count or len(sports)), "--concurrency", str(concurrency)]
    if sports:
        args += ["--sports", ",".join(map(str, sports))]
    elif sport_base:
        args += ["--sport-base", str(sport_base)]
    client = Client.start(host, target, "burst", *args)
    out = []
    while (line := client.lines.next(30)) is not None:
        out.append(Outcome(**json.loads(line)))
        if progress is not None:
            progress(out[-1])
    client.end()
    return out


def rate(host: Host, target: Target, seconds: float, concurrency: int) -> RateSummary:
    """As many new connections as concurrency workers manage in seconds, summed up."""
    args = ["--seconds", str(seconds), "--concurrency", str(concurrency), "--summary"]
    client = Client.start(host, target, "stream", *args)
    summary = RateSummary(**client.lines.json(seconds + 60, "stream --summary"))
    client.end()
    return summary


@dataclass
class Stream:
    """New connections opened back to back by a client for a while, read as they finish."""

    host: Host
    target: Target
    seconds: float
    concurrency: int = 4
    pause: float = 0.005
    timeout: float = 3.0
    results: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = Client.start(
            self.host, self.target, "stream", "--seconds", str(self.seconds),
            "--concurrency", str(self.concurrency), "--pause", str(self.pause),
            "--timeout", str(self.timeout),
        )  # fmt: skip

    def _more(self, timeout: float) -> bool:
        line = self.client.lines.next(timeout)
        if line is not None:
            self.results.append(Outcome(**json.loads(line)))
        return line is not None

    def wait_for(self, pred: Callable[[list[Outcome]], bool], timeout: float = 10) -> None:
        """Until pred(results so far) holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not pred(self.results):
            left = deadline - time.monotonic()
            if left <= 0 or not self._more(left):
                raise LabError(f"the stream stalled: {self.results[-3:]}")

    def finish(self) -> list[Outcome]:
        """Every outcome once the client is done, by start time."""
        while self._more(self.seconds + 2 * self.timeout + 10):
            pass
        self.client.end()
        return sorted(self.results, key=lambda r: r.t)


class Held:
    """Long-lived keep-alive connections (client hold)."""

    def __init__(self, host: Host, target: Target, count: int) -> None:
        self.client = Client.start(host, target, "hold", "--count", str(count), stdin=True)
        self.sports: list[int] = self.client.lines.json(20, "hold")["sports"]

    def ping(self) -> list[str]:
        """One request on every connection: the answering backends ("error: ..." if broken)."""
        return self.client.ask("ping", 30)

    def close(self) -> None:
        self.client.end()


class Talk:
    """Long-lived conversations (client talk) through a VIP, measured."""

    def __init__(self, host: Host, target: Target, count: int, interval: float = 0.1) -> None:
        args = ["--count", str(count), "--interval", str(interval)]
        self.client = Client.start(host, target, "talk", *args, stdin=True)
        self.ready: dict = self.client.lines.json(30, "talk's connections")

    def stalled(self) -> int:
        return self.client.ask("stalled", 10)["stalled"]

    def wait_flowing(self, timeout: float) -> None:
        """Until no live conversation is stalled."""
        wait_until(lambda: self.stalled() == 0, timeout, "every conversation flowing")

    def stop(self) -> TalkReport:
        report = TalkReport.from_json(self.client.ask("stop", 30))
        self.client.end()
        return report
