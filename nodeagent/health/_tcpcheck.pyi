# Types of the C extension built from _tcpcheck.c (setup.py).
from typing import SupportsIndex

# A change of a target's state: (handle, failing, reason of the last failure).
Change = tuple[int, bool, str]

class TcpChecks:
    completed: int
    in_flight: int
    spare: int
    def __init__(self, slot: float = 0.02, max_targets: int = 65536) -> None: ...
    def add(
        self,
        address: str,
        port: int,
        mark: int,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        first: float,
        /,
    ) -> int: ...
    def add_reported(self, rise: int, fall: int, /) -> int: ...
    def report(self, handle: int, reason: str | None, /) -> tuple[Change, ...] | list[Change]: ...
    def remove(self, handle: SupportsIndex, /) -> None: ...
    def tick(self, now: float, /) -> tuple[float, tuple[Change, ...] | list[Change]]: ...
    def close(self) -> None: ...

def disconnect(fd: int, /) -> bool: ...
