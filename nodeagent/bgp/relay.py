"""ExaBGP's API helper: joins ExaBGP's pipes to the speaker's Unix socket.

ExaBGP drives its API through a helper process it starts itself (`process ... { run ...; }`):
it reads commands from the helper's stdout and writes events and answers to its stdin.
This helper connects to the socket the speaker listens on and copies bytes both ways, so
the speaker (an asyncio task in the agent) talks to ExaBGP directly. It exits as soon as
either side closes: ExaBGP gone (stdin EOF) or speaker gone (socket EOF).

When the speaker is gone while ExaBGP still runs (the agent was killed), the relay kills
ExaBGP (SIGKILL, its parent), so that ExaBGP never outlives the agent and keeps announcing
routes nobody controls; it ends the sessions the way a crash does. The agent's own guard
(PR_SET_PDEATHSIG) does not survive ExaBGP's drop to an unprivileged user, and the relay,
started before that drop, still may. It only does so while ExaBGP is still its parent:
once ExaBGP is gone the relay has been re-parented and kills nothing.

Run as a script, standard library only (`python -I relay.py SOCKET`): it must start fast
and must not import the agent.
"""

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable


def _copy(read: Callable[[int], bytes], write: Callable[[bytes], object]) -> None:
    try:
        while data := read(65536):
            write(data)
    except OSError:
        pass


def main() -> None:
    exabgp = os.getppid()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sys.argv[1])
    except OSError as exc:
        sys.stderr.write(f"weir bgp relay: cannot connect to {sys.argv[1]}: {exc}\n")
        sys.exit(1)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

    def to_stdout(data: bytes) -> None:
        while data:
            data = data[os.write(stdout, data) :]

    def from_exabgp() -> None:
        _copy(lambda n: os.read(stdin, n), sock.sendall)
        os._exit(0)  # ExaBGP is gone

    threading.Thread(target=from_exabgp, daemon=True).start()
    _copy(sock.recv, to_stdout)
    # The speaker is gone. ExaBGP must not outlive it (see above).
    if os.getppid() == exabgp:
        os.kill(exabgp, signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    main()
