"""``flower-supernode`` with shorter internal waits: ``python -m fedpeft.runtime.deploy.supernode [its flags]``.

Flower 1.41's SuperNode loop sleeps a hard-coded 3 s whenever the SuperLink has no message for it, and polls every
0.5 s for the reply of the task it is running. Both add directly to every round's latency (a message that arrives
just after a pull waits up to 3 s). This launcher replaces the ``time`` module seen by that loop
(``flwr.supernode.start_client_internal``) with one whose ``sleep`` is capped: ``--idle-poll`` (default 0.25 s) for
the idle wait, ``--reply-poll`` (default 0.02 s) for the reply wait. Everything else is Flower's own SuperNode; the
remaining arguments go to it unchanged. If a Flower version has no such module-level ``time``, the launcher says so
and runs the SuperNode unpatched rather than failing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


class CappedSleep:
    """A stand-in for the ``time`` module whose ``sleep`` waits at most ``idle`` (for the SuperNode's 3 s idle
    wait, i.e. any sleep >= 1 s) or ``reply`` seconds (shorter sleeps); every other attribute is ``time``'s."""

    def __init__(self, idle: float, reply: float) -> None:
        self.idle, self.reply = idle, reply

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.idle if seconds >= 1.0 else self.reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--idle-poll", type=float, default=0.25)
    parser.add_argument("--reply-poll", type=float, default=0.02)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    import flwr.supernode.start_client_internal as loop

    if getattr(loop, "time", None) is time:
        loop.time = CappedSleep(ours.idle_poll, ours.reply_poll)  # type: ignore[assignment]
    else:
        print("fedpeft: this Flower version's SuperNode loop cannot be sped up; running it as is", file=sys.stderr)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
