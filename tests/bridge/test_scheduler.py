"""The queue of a team engine (bridge/scheduler.py): round-robin between users and their connections,
re-edits routed to the worker holding the photo, a bounded steal, per-user limits, positions."""

from __future__ import annotations

import asyncio

import pytest

from ffclip.bridge.jobs import Job, QueueFull
from ffclip.bridge.messages import EditAnnouncement
from ffclip.bridge.scheduler import Scheduler
from ffclip.plugin.protocol import EditParams, ImageSpec


class Sink:
    def __init__(self):
        self.messages = []

    def deliver(self, message, binary=None, droppable=False):
        self.messages.append(message)


def make_job(user: str, connection: int = 0, photo: str | None = "", name: str = "", size: int = 64) -> Job:
    request = EditAnnouncement(name or f"{user}{connection}", EditParams.single("x"), ImageSpec(16, 16))
    memo = {} if photo == "" else {"photo": photo}
    return Job(request, bytes(size), None, Sink(), memo=memo, user=user, connection=connection)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


async def take(queue: Scheduler, worker: int, release: bool = True) -> Job:
    job = await queue.next(worker)
    if release:
        queue.release(worker, job)
    return job


async def pending(queue: Scheduler, worker: int) -> asyncio.Task:
    """A worker asking for a job; the task is still waiting when nothing is for it."""
    task = asyncio.create_task(queue.next(worker))
    await asyncio.sleep(0.01)
    return task


def test_round_robin_between_users_then_their_connections():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None)
        for i in range(5):
            queue.submit(make_job("ann", 1, name=f"ann-batch-{i}"))
        queue.submit(make_job("ann", 2, name="ann-live"))
        queue.submit(make_job("bob", 1, name="bob-single"))
        for i in range(2):
            queue.submit(make_job("cid", 1, name=f"cid-{i}"))
        return [(await take(queue, 0)).id for _ in range(9)]

    order = run(scenario())
    assert order == [
        "ann-batch-0",
        "bob-single",  # the single edit of another user comes second, not after ann's batch
        "cid-0",
        "ann-live",  # ann's second connection before her batch goes on
        "cid-1",
        "ann-batch-1",
        "ann-batch-2",
        "ann-batch-3",
        "ann-batch-4",
    ]


def test_a_user_arriving_behind_a_batch_is_next():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None)
        for i in range(60):
            queue.submit(make_job("ann", name=f"a{i}"))
        started = [(await take(queue, 0)).id for _ in range(3)]
        queue.submit(make_job("bob", name="single"))
        started += [(await take(queue, 0)).id for _ in range(2)]
        return started

    assert run(scenario()) == ["a0", "a1", "a2", "single", "a3"]


def test_positions_follow_the_round_robin_order():
    async def scenario():
        reported = []
        queue = Scheduler(100, 1 << 30, reported.extend, workers=2)
        jobs = [make_job("ann", name=f"a{i}", photo=f"p{i}") for i in range(3)] + [
            make_job("bob", photo="q", name="bob")
        ]
        for job in jobs:
            queue.submit(job)
        await take(queue, 0, release=False)  # one of two workers busy: the next starts now
        first = {job.id: job.position for job in jobs[1:]}
        await take(queue, 1, release=False)  # both busy
        second = {job.id: job.position for job in jobs[2:3]}
        return first, second

    first, second = run(scenario())
    assert first == {"a1": 1, "a2": 2, "bob": 0}
    assert second == {"a2": 2}  # a1 is next, then a2, behind the running ones


def test_a_re_edit_waits_for_the_worker_that_holds_its_photo():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None, workers=2)
        queue.submit(make_job("ann", photo="P", name="first"))
        first = await take(queue, 0, release=False)
        queue.submit(make_job("ann", photo="P", name="re-edit"))
        other = await pending(queue, 1)
        waited = not other.done()
        queue.submit(make_job("bob", photo="Q", name="new photo"))
        new = await other  # the idle worker takes the new photo, not the re-edit
        queue.release(0, first)
        again = await take(queue, 0)
        return waited, new.id, again.id, dict(queue.stats)

    waited, new, again, stats = run(scenario())
    assert waited and new == "new photo" and again == "re-edit"
    assert stats == {"new": 2, "routed": 1}


def test_a_free_holder_takes_its_photo_whoever_asks_first():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None, workers=2)
        queue.submit(make_job("ann", photo="P", name="first"))
        await take(queue, 0)  # worker 0 now holds P and is free
        for name in ("re-edit", "re-edit 2", "re-edit 3"):  # a pile that a busy holder would share
            queue.submit(make_job("ann", photo="P", name=name))
        asker = await pending(queue, 1)
        holder = await take(queue, 0)
        await asyncio.sleep(0.01)
        return asker.done(), holder.id

    asker_done, holder = run(scenario())
    assert not asker_done and holder == "re-edit"


def test_a_photo_pile_behind_a_busy_holder_is_shared_after_two():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None, workers=2, steal_after=2)
        queue.submit(make_job("ann", photo="P", name="first"))
        await take(queue, 0, release=False)
        for i in range(3):
            queue.submit(make_job("ann", photo="P", name=f"re{i}"))
        stolen = await take(queue, 1, release=False)
        return stolen, queue.holders(stolen), dict(queue.stats)

    stolen, holders, stats = run(scenario())
    assert stolen.id == "re2" and stolen.moved == 2  # two earlier jobs wait for worker 0
    assert holders == {0, 1} and stats["moved"] == 1


def test_a_job_waits_for_its_photo_key():
    async def scenario():
        queue = Scheduler(100, 1 << 30, lambda jobs: None, workers=2)
        job = make_job("ann", photo=None)  # the key is being computed
        queue.submit(job)
        worker = await pending(queue, 0)
        waited = not worker.done()
        job.memo["photo"] = "P"
        queue.changed()
        return waited, await worker

    waited, job = run(scenario())
    assert waited and job.photo == "P"


def test_limits_are_per_user():
    async def scenario():
        queue = Scheduler(2, 200, lambda jobs: None)
        queue.submit(make_job("ann"))
        queue.submit(make_job("ann"))
        with pytest.raises(QueueFull, match="for ann"):
            queue.submit(make_job("ann"))
        queue.submit(make_job("bob", size=150))  # another user's edit is not busy
        with pytest.raises(QueueFull, match="pixels for bob"):
            queue.submit(make_job("bob", size=100))
        return len(queue)

    assert run(scenario()) == 3
