"""``flower-supernode`` with shorter internal waits: ``python <this file> [--idle-poll S] [flower-supernode flags]``.

Flower 1.41's SuperNode loop sleeps a hard-coded 3 s whenever the SuperLink has no message for it, polls every
0.5 s for the reply of the task it is running, and downloads a message's objects with a retry backoff that starts
at 1 s and grows to 10 s; a message's objects are often still on their way when the first attempt is made (the
message is announced before its payload), so that backoff alone costs 1-7 s per message. All of it adds directly
to every round's latency. This launcher replaces the ``time`` module seen by the SuperNode loop
(``flwr.supernode.start_client_internal``) with one whose ``sleep`` is capped (``--idle-poll``, default 0.25 s, for
the idle wait; 0.02 s for shorter waits), and its object download with one that retries after 0.05 s growing to
0.5 s (:func:`fast_object_pulls`, also used by the fedpeft worker and server program). Everything else is
Flower's own SuperNode; the remaining arguments go to it unchanged. If a Flower version lacks these module-level
names, the launcher says so and runs the SuperNode unpatched rather than failing.

It is run by path, not with ``-m``: importing the ``fedpeft`` package would load torch into every SuperNode.
It imports only the standard library and flwr.
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


def fast_object_pulls(module: Any, initial_backoff: float = 0.05, backoff_cap: float = 0.5) -> bool:
    """Wrap ``module.pull_objects`` (Flower's object download) so that its retries start after
    ``initial_backoff`` seconds and wait at most ``backoff_cap``; returns False when the module has no such name."""
    original = getattr(module, "pull_objects", None)
    if original is None:
        return False

    def pull_objects(*args: Any, **kwargs: Any) -> Any:
        kwargs["initial_backoff"] = min(kwargs.get("initial_backoff", initial_backoff), initial_backoff)
        kwargs["backoff_cap"] = min(kwargs.get("backoff_cap", backoff_cap), backoff_cap)
        return original(*args, **kwargs)

    module.pull_objects = pull_objects
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--idle-poll", type=float, default=0.25)
    parser.add_argument("--reply-poll", type=float, default=0.02)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    import flwr.supernode.start_client_internal as loop

    if getattr(loop, "time", None) is time and fast_object_pulls(loop):
        loop.time = CappedSleep(ours.idle_poll, ours.reply_poll)  # type: ignore[assignment]
    else:
        print("fedpeft: this Flower version's SuperNode loop cannot be sped up; running it as is", file=sys.stderr)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
