"""Several engines behind one address with the shipped HAProxy configuration (deploy/haproxy/haproxy.cfg;
issue 28): sticky routing by client id, a dead engine's clients moving to the other, a drain that finishes
its queue while new edits go elsewhere. Real engines and a real HAProxy; skipped without haproxy (failed
in CI). Each engine carries a marker, its --max-queue, that its greeting reports: which engine answered."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, ImageSpec
from tests.support.daemon import Daemon, daemon_env
from tests.support.haproxy import HAProxy, need_haproxy, wait_ready
from tests.support.paths import DATA
from tests.support.raw import PHOTO, Raw

MARKERS = (31, 32)  # --max-queue of the first and second engine
PROMPTS = ("smiling", "grey hair", "surprised")


def engines(tmp_path, *args: str) -> list[Daemon]:
    env = daemon_env(FFCLIP_STATE_DIR=str(tmp_path / "state"))
    common = ("--port", "0", "--trusted-proxy", "127.0.0.1", *args)
    return [
        Daemon(*common, "--max-queue", str(m), "--log-file", str(tmp_path / f"engine{m}.log"), env=env) for m in MARKERS
    ]


def marker(status: dict) -> int:
    return status["limits"]["max_queue"]


def client_ids(url: str, count: int) -> dict[str, int]:
    """`count` client ids, with the engine each lands on, that reach both engines."""
    chosen: dict[str, int] = {}
    for i in range(64):
        client_id = f"{i:032x}"
        with EngineClient(url, timeout=20, client_id=client_id) as client:
            engine = marker(client.last_status)
        if len(chosen) == count - 1 and set(chosen.values()) == {engine}:
            continue  # the last one must land on the other engine
        chosen[client_id] = engine
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"64 client ids did not reach both engines: {chosen}")


@pytest.mark.process
@pytest.mark.slow
def test_artists_stay_on_the_engine_holding_their_inversion_and_move_when_it_dies(tmp_path):
    binary = need_haproxy()
    daemons = engines(tmp_path, "--profile", "tiny")
    proxy = None
    try:
        for daemon in daemons:
            wait_ready(daemon.port, 180)
        proxy = HAProxy(binary, tmp_path, (daemons[0].port, daemons[1].port))
        clients = client_ids(proxy.url, 3)
        with Image.open(DATA / "photos" / "astronaut.png") as im:
            photo = np.asarray(im.convert("RGBA"))
        spec = ImageSpec(photo.shape[1], photo.shape[0])
        records: dict[str, list[dict]] = {c: [] for c in clients}
        errors: list[BaseException] = []

        victim = daemons[0]
        # the first engine dies when every artist is midway through the second run (not before, and not
        # after the quick ones are done): the barrier's action runs before any of them goes on
        midway = threading.Barrier(len(clients), action=lambda: victim.proc.send_signal(signal.SIGKILL))

        def artist(number: int, client_id: str, edits: range) -> None:
            own = photo.copy()
            own[..., 0] = np.clip(own[..., 0].astype(int) + 3 * number, 0, 255)  # each artist's own photo
            for i in edits:
                if i == 13:
                    midway.wait(120)
                params = EditParams.single(PROMPTS[i % 3], 0.5 + 0.1 * (i % 5), preview=True)
                moves: list = []
                try:  # a connection per edit: stickiness must hold across connections
                    with EngineClient(proxy.url, timeout=60, client_id=client_id) as client:
                        result = client.edit(params, own.tobytes(), spec, on_moved=lambda *a, m=moves: m.append(a))
                        engine = marker(client.last_status)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return
                record = {"id": result.id, "invert": "invert" in result.stages, "engine": engine, "moved": bool(moves)}
                records[client_id].append(record)

        def run(edits: range) -> None:
            threads = [threading.Thread(target=artist, args=(n, c, edits)) for n, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not errors, errors

        run(range(10))
        for client_id, home in clients.items():
            done = records[client_id]
            assert {r["engine"] for r in done} == {home}  # every re-edit on the artist's engine ...
            assert [r["invert"] for r in done] == [True] + [False] * 9  # ... which inverted the photo once
        run(range(10, 20))
        assert victim.proc.poll() is not None
        ids = [r["id"] for done in records.values() for r in done]
        assert len(ids) == 60 and len(set(ids)) == 60  # every edit ended once, with its result
        for client_id, home in clients.items():
            after = records[client_id][10:]
            assert after[-1]["engine"] == MARKERS[1]  # the survivor has them all by the end
            inversions = sum(r["invert"] for r in after)
            # the survivor's own artists never invert again; the moved ones once, on their new engine
            assert inversions == (0 if home == MARKERS[1] else 1), (home, after)
    finally:
        if proxy is not None:
            proxy.stop()
        for daemon in daemons:
            daemon.stop(signal.SIGKILL)


@pytest.mark.process
def test_a_draining_engine_finishes_its_queue_while_new_edits_go_to_the_other(tmp_path):
    binary = need_haproxy()
    daemons = engines(tmp_path, "--fake-engine", "--fake-stage-seconds", "0.1", "--drain-grace", "30")
    proxy = None
    try:
        for daemon in daemons:
            wait_ready(daemon.port, 60)
        proxy = HAProxy(binary, tmp_path, (daemons[0].port, daemons[1].port))
        client_id = "0" * 32
        raw = Raw(proxy.url, headers={"X-FFCLIP-Client": client_id})
        draining = next(d for d, m in zip(daemons, MARKERS, strict=True) if m == marker(raw.greeting))
        jobs = [raw.edit() for _ in range(4)]  # 0.7 s each: three wait in its queue
        early = raw.until_queued(jobs)  # in its queue before the SIGTERM, not refused by the drain
        draining.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # a new connection of the same artist: the draining engine refuses it (503), HAProxy retries
        # it on the other; the engine's own refusal of an edit on an open connection moves it too
        with EngineClient(proxy.url, timeout=20, client_id=client_id) as client:
            image = np.ascontiguousarray(PHOTO).tobytes()
            result = client.edit(EditParams.single("smiling"), image, ImageSpec(128, 96))
            assert result.stages and marker(client.last_status) != marker(raw.greeting)
        ends = {job: message["type"] for job, message in raw.ends_until_closed(30, early).items()}
        assert ends == {job: "result" for job in jobs}  # queued at the SIGTERM: all finished
        assert draining.proc.wait(30) == 0
    finally:
        if proxy is not None:
            proxy.stop()
        for daemon in daemons:
            daemon.stop(signal.SIGKILL)
