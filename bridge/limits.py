"""What one client may take of the engine: connections, handshakes in progress, memory — with a
reserve for the honest, and logs that say so once per interval instead of once per attempt.

Nobody has to break a protocol rule to starve a server: opening many connections, or opening them
and sending slowly, or announcing big edits and never finishing them, is enough. So:

- `Admission` caps the connections (well below the process's file limit, so accepting never fails),
  caps the handshakes in progress (when they are all taken, the *oldest* is dropped: a slow, half-sent
  handshake loses its place to a client that completes its own in milliseconds), and caps the
  connections of one user (its token's owner; without tokens, its address).
- `MemoryBudget` holds the bytes the engine keeps for clients — announced frames still arriving,
  each connection's last image (kept for `reuse_image`), replies not yet sent — to one budget, of
  which one user may hold only a share.
- `Throttled` turns a flood of the same event into one log line per interval with a count.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Hashable

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_HANDSHAKES = 64
DEFAULT_MAX_PER_USER = 16
DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes held for clients, all together
USER_SHARE = 0.5  # of the memory budget, what one user may hold
FILE_RESERVE = 128  # descriptors kept for everything else: logs, model files, worker threads
ACCEPT_BATCH = 32  # connections asyncio accepts at once before any is looked at (its `backlog`)


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ValueError, OSError):
        return 1024


def connection_cap(wanted: int, file_limit: int) -> int:
    """The connections to allow: as asked, but always FILE_RESERVE descriptors below the file limit,
    plus one accept batch (those are accepted before the cap can close them)."""
    return max(8, min(wanted, file_limit - FILE_RESERVE - ACCEPT_BATCH))


class Throttled:
    """Counts events of a kind and logs them at most once per `interval` seconds, with the count."""

    def __init__(self, log: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.log, self.interval, self.clock = log, interval, clock
        self.counts: Counter[str] = Counter()
        self.last: dict[str, float] = {}

    def note(self, kind: str, text: str, last: str = "") -> None:
        """One more `kind` event; `text` (with `{n}` for the count since the last line) is logged,
        followed by `last` (the latest event's details), when the interval since the last line of
        this kind has passed."""
        self.counts[kind] += 1
        now = self.clock()
        if now - self.last.get(kind, float("-inf")) >= self.interval:
            line = text.replace("{n}", str(self.counts[kind]))
            self.log.warning(f"{line} (last: {last})" if last else line)
            self.counts[kind] = 0
            self.last[kind] = now


class Admission:
    """Connections from the accept to the close: `opened` decides at the accept, `handshaken` moves
    one out of the handshakes in progress, `joins` decides per user, `closed` forgets it."""

    def __init__(
        self,
        max_connections: int,
        max_handshakes: int,
        max_per_user: int,
        drop: Callable,
        full: Callable = lambda: None,
    ):
        self.max_connections, self.max_handshakes, self.max_per_user = max_connections, max_handshakes, max_per_user
        self.drop = drop  # drop(connection): close it at once (an evicted handshake)
        self.full = full  # full(): a connection was refused at the accept (to report it)
        self.open: set = set()
        self.handshaking: dict = {}  # connection -> accepted at (oldest first)
        self.users: Counter[Hashable] = Counter()
        self.user_of: dict = {}

    def opened(self, connection) -> str | None:
        """None to admit it, else why it is refused (the caller drops it). When every handshake slot
        is taken, the oldest handshake in progress is dropped to make room (and reported)."""
        if len(self.open) >= self.max_connections:
            self.full()
            return "connections"
        evicted = None
        if len(self.handshaking) >= self.max_handshakes:
            evicted = next(iter(self.handshaking))
            self.handshaking.pop(evicted)
            self.drop(evicted)
        self.open.add(connection)
        self.handshaking[connection] = time.monotonic()
        return "evicted" if evicted is not None else None

    def handshaken(self, connection) -> None:
        self.handshaking.pop(connection, None)

    def joins(self, connection, user: Hashable) -> bool:
        """Whether `user` may hold one more connection; counted until `closed` when it may."""
        if self.users[user] >= self.max_per_user:
            return False
        self.users[user] += 1
        self.user_of[connection] = user
        return True

    def closed(self, connection) -> None:
        self.open.discard(connection)
        self.handshaking.pop(connection, None)
        user = self.user_of.pop(connection, None)
        if user is not None:
            self.users[user] -= 1
            if self.users[user] <= 0:
                del self.users[user]


class MemoryBudget:
    """The bytes held for clients, against one budget; one user may hold `USER_SHARE` of it."""

    def __init__(self, budget: int, held: Callable[[], Counter]):
        self.budget = budget
        self.held = held  # -> Counter(user -> bytes held for that user now)

    def refusal(self, user: Hashable, need: int) -> str | None:
        """None when `need` more bytes for `user` fit; else why not (a sentence)."""
        held = self.held()
        if held[user] + need > self.budget * USER_SHARE:
            mb = self.budget * USER_SHARE / 1e6
            return f"this client already holds its share of the engine's memory ({mb:.0f} MB); try again shortly"
        if sum(held.values()) + need > self.budget:
            return f"the engine's memory for clients ({self.budget / 1e6:.0f} MB) is taken; try again shortly"
        return None

    def describe(self) -> dict:
        held = self.held()
        return {"budget_bytes": self.budget, "held_bytes": sum(held.values()), "user_share": USER_SHARE}
