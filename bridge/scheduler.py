"""The job queue of a daemon with one or several workers: fair between artists, affine to photos.

Fairness: waiting jobs sit in lanes, one per user (the token's owner; everyone is one user when the
engine has no tokens file) and inside it one per connection. A free worker serves the user served
least recently, and inside that user the connection served least recently: round-robin, so one
artist's batch of 200 photos delays another artist's single edit by at most one job per worker.
Inside a connection, jobs keep their order.

Affinity: with several workers, a photo's detection, alignment and inversion are cached by the
worker that edited it. Each job carries its photo's key (a SHA-256 of the image frame, computed off
the event loop; a `reuse_image` job shares its photo's key), and the scheduler remembers which
workers ran which photos. A job whose photo a worker holds waits for that worker; another worker
takes it only when every holder is busy and has at least `steal_after` other jobs for it that were
submitted before this one (then waiting costs more than inverting again); the job is then "moved".
A job whose key is still being computed is not handed out yet.

Limits are per user, so a batch that fills its own queue never makes another artist's edit `busy`.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator

from .jobs import Job, QueueFull

log = logging.getLogger("ffclip.bridge")

MAX_PHOTOS = 4096  # photo → worker records kept (a routing hint: an old one only costs an inversion)


class Scheduler:
    def __init__(
        self,
        max_jobs: int,
        max_bytes: int,
        on_positions: Callable[[list[Job]], None],
        workers: int = 1,
        steal_after: int = 2,
    ):
        self.max_jobs = max_jobs  # per user
        self.max_bytes = max_bytes  # per user
        self.workers = workers
        self.steal_after = steal_after
        self.running: dict[int, Job] = {}  # worker index → its job
        self.by_id: dict[str, Job] = {}
        self.stats: Counter[str] = Counter()  # routed (to a holder), new (no holder), moved
        self._lanes: OrderedDict[str, OrderedDict[int, deque[Job]]] = OrderedDict()  # user → connection → jobs
        self._served: dict[object, int] = {}  # user, or (user, connection): tick when last served
        self._tick = itertools.count()
        self._holders: OrderedDict[str, set[int]] = OrderedDict()  # photo key → workers that ran it
        self._on_positions = on_positions
        self._waiters: set[asyncio.Future] = set()  # workers waiting for a job

    # ------------------------------------------------------------------ waiting jobs

    def __len__(self) -> int:
        return sum(len(q) for lanes in self._lanes.values() for q in lanes.values())

    @property
    def waiting(self) -> list[Job]:
        """Waiting jobs in submission order."""
        return sorted((j for lanes in self._lanes.values() for q in lanes.values() for j in q), key=_order)

    def submit(self, job: Job) -> None:
        user = job.user
        mine = [j for q in self._lanes.get(user, {}).values() for j in q]
        who = f" for {user}" if user else ""
        if len(mine) >= self.max_jobs:
            raise QueueFull(f"the engine queue is full ({self.max_jobs} jobs waiting{who})")
        if mine and sum(j.nbytes for j in mine) + job.nbytes > self.max_bytes:
            raise QueueFull(f"the engine queue holds too many pixels{who} (limit {self.max_bytes >> 20} MiB)")
        job.sequence = next(self._tick)
        self._lanes.setdefault(user, OrderedDict()).setdefault(job.connection, deque()).append(job)
        self.by_id[job.id] = job
        self.changed()

    def remove(self, job: Job) -> bool:
        """Take a waiting job out of the queue; False when it is not waiting."""
        lanes = self._lanes.get(job.user)
        lane = lanes.get(job.connection) if lanes is not None else None
        if lane is None or job not in lane:
            return False
        lane.remove(job)
        self._prune(job)
        self.by_id.pop(job.id, None)
        self.changed()
        return True

    def changed(self) -> None:
        """Something a waiting worker decides on changed (a job, a photo key, a worker's state)."""
        self._report()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ workers

    async def next(self, worker: int) -> Job:
        """The next job for `worker` (waits until there is one it should run)."""
        while True:
            job = self._pick(worker)
            if job is not None:
                self._take(worker, job)
                return job
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def release(self, worker: int, job: Job) -> None:
        """`worker` is done with `job`."""
        if self.running.get(worker) is job:
            del self.running[worker]
        self.by_id.pop(job.id, None)
        self.changed()

    def holders(self, job: Job) -> set[int]:
        photo = job.photo
        return set(self._holders.get(photo, ())) if photo is not None else set()

    def _take(self, worker: int, job: Job) -> None:
        tick = next(self._tick)
        self._served[job.user] = self._served[(job.user, job.connection)] = tick
        self._lanes[job.user][job.connection].remove(job)
        self._prune(job)
        job.state = "running"
        self.running[worker] = job
        holders = self.holders(job)
        if holders and worker not in holders:  # a steal: how long it would have waited, for the log
            job.moved = min(self._ahead_for(h, job) for h in holders)
        self.stats["moved" if job.moved is not None else "routed" if holders else "new"] += 1
        if job.photo is not None and self.workers > 1:
            self._holders.setdefault(job.photo, set()).add(worker)
            self._holders.move_to_end(job.photo)
            while len(self._holders) > MAX_PHOTOS:
                self._holders.popitem(last=False)
        self.changed()

    def _prune(self, job: Job) -> None:
        lanes = self._lanes.get(job.user)
        if lanes is not None and not lanes.get(job.connection, True):
            del lanes[job.connection]
            self._served.pop((job.user, job.connection), None)  # a connection's turn ends with its jobs
        if lanes is not None and not lanes:
            del self._lanes[job.user]

    # ------------------------------------------------------------------ choosing

    def _pick(self, worker: int) -> Job | None:
        """The job `worker` should run now: users, then their connections, least recently served
        first; in a connection the first job this worker may run."""
        if worker in self.running:
            return None
        for user in sorted(self._lanes, key=lambda u: self._served.get(u, -1)):
            lanes = self._lanes[user]
            for connection in sorted(lanes, key=lambda c: self._served.get((user, c), -1)):
                for job in lanes[connection]:
                    if self._may_run(worker, job):
                        return job
        return None

    def _may_run(self, worker: int, job: Job) -> bool:
        if self.workers == 1:
            return True
        if job.photo is None:
            return False  # its key is still being computed: it cannot be routed yet
        holders = self._holders.get(job.photo)
        if not holders or worker in holders:
            return True
        if any(h not in self.running for h in holders):
            return False  # a free holder takes it
        return all(self._ahead_for(h, job) >= self.steal_after for h in holders)

    def _ahead_for(self, worker: int, job: Job) -> int:
        """Jobs submitted before `job` that wait for `worker` (it holds their photo)."""
        return sum(
            1
            for other in self._jobs()
            if other.sequence < job.sequence
            and other.photo is not None
            and worker in self._holders.get(other.photo, ())
        )

    def _jobs(self) -> Iterator[Job]:
        for lanes in self._lanes.values():
            for lane in lanes.values():
                yield from lane

    # ------------------------------------------------------------------ positions

    def projected(self) -> list[Job]:
        """Waiting jobs in the order round-robin would start them (affinity aside)."""
        served = dict(self._served)
        lanes = {u: {c: deque(q) for c, q in ls.items()} for u, ls in self._lanes.items()}
        order: list[Job] = []
        tick = next(self._tick)
        while lanes:
            user = min(lanes, key=lambda u: served.get(u, -1))
            connection = min(lanes[user], key=lambda c: served.get((user, c), -1))
            order.append(lanes[user][connection].popleft())
            tick += 1
            served[user] = served[(user, connection)] = tick
            if not lanes[user][connection]:
                del lanes[user][connection]
                served.pop((user, connection), None)
            if not lanes[user]:
                del lanes[user]
        return order

    def _report(self) -> None:
        """Tell owners whose position changed; position = jobs that start before it, plus one when
        every worker is busy (the first of them must end first)."""
        busy = 1 if len(self.running) >= self.workers else 0
        changed = []
        for index, job in enumerate(self.projected()):
            if job.position != busy + index:
                job.position = busy + index
                changed.append(job)
        if changed:
            self._on_positions(changed)


def _order(job: Job) -> int:
    return job.sequence
