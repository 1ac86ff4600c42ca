"""Probes, drain and the trusted proxy (bridge/server.py; issue 28: several engines behind HAProxy).

`GET /healthz` and `GET /readyz` on the engine's port, a drain that finishes the queued jobs and refuses
new ones with `busy` flagged `draining`, and X-Forwarded-For believed only from a trusted proxy."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from ffclip.bridge.backend import UnavailableBackend
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import ServerThread, running_server
from ffclip.plugin.client import open_engine_socket
from ffclip.plugin.protocol import Draining
from ffclip.plugin.websocket import ConnectionClosed
from tests.support.raw import Raw
from tests.support.waiting import until


def probe(port: int, path: str, headers: dict | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_readyz_is_503_while_loading_and_200_once_loaded():
    release = threading.Event()

    def slow_loader():
        release.wait(20)
        return FakeBackend()

    thread = ServerThread(slow_loader).start(wait=False)
    try:
        port = thread.server.port
        assert probe(port, "/healthz") == (200, "ok\n")  # the process answers
        status, reason = probe(port, "/readyz")
        assert status == 503 and reason.startswith("loading:") and reason.count("\n") == 1
        release.set()
        until(lambda: probe(port, "/readyz") == (200, "ready\n"))
    finally:
        release.set()
        thread.stop()


def test_readyz_is_503_when_the_models_are_missing():
    missing = UnavailableBackend("models_missing", "no model weights", {"missing": ["e4e_ffhq_encode.pt"]})
    with running_server(lambda: missing) as thread:
        status, reason = probe(thread.server.port, "/readyz")
        assert status == 503 and reason.startswith("missing:")
        assert probe(thread.server.port, "/healthz")[0] == 200


def test_probes_need_no_token_refuse_web_pages_and_hold_no_connection():
    with running_server(lambda: FakeBackend(), token="t" * 20, max_connections_per_user=1) as thread:
        port, admission = thread.server.port, thread.server.admission
        for _ in range(5):  # more than one user's connections: probes are not counted against a quota
            assert probe(port, "/readyz?full=1") == (200, "ready\n")
        assert probe(port, "/readyz", {"Origin": "https://example.com"})[0] == 403
        until(lambda: not admission.open and not admission.handshaking and not admission.users)
        assert probe(port, "/metrics")[0] == 426  # anything else is for websockets only


def test_a_websocket_on_a_probe_path_is_still_a_websocket():
    with running_server(lambda: FakeBackend()) as thread:
        raw = Raw(thread.url + "readyz")
        assert raw.greeting["type"] == "status" and raw.greeting["state"] == "ready"
        raw.ws.close()


def test_a_drain_finishes_the_queued_jobs_and_refuses_new_work():
    thread = ServerThread(lambda: FakeBackend(0.1), drain_grace=30.0).start()
    port = thread.server.port
    raw = Raw(thread.url)
    jobs = [raw.edit() for _ in range(4)]  # 0.7 s each: three are still waiting when the drain starts
    until(lambda: thread.server.stats["accepted"] == 4)  # queued before the drain, not refused by it
    stopper = threading.Thread(target=thread.stop)
    stopper.start()
    until(lambda: thread.server.draining)
    status, reason = probe(port, "/readyz")
    assert status == 503 and reason.startswith("draining:")
    with pytest.raises(Draining):  # a new connection: refused at the handshake, for another engine
        open_engine_socket(thread.url, None, 5)
    late = raw.edit()
    ends, refusal, draining_seen = {}, None, False
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            message = raw.ws.recv(20)
            if isinstance(message, bytes):
                continue
            message = json.loads(message)
            draining_seen = draining_seen or message.get("state") == "draining"
            if message.get("id") == late:
                refusal = message
            elif message["type"] in ("result", "error", "cancelled"):
                assert message["id"] not in ends
                ends[message["id"]] = message["type"]
    stopper.join(30)
    assert closed.value.code == 1001
    assert ends == {job: "result" for job in jobs}  # queued when the drain began: finished, not cancelled
    assert refusal is not None and refusal["code"] == "busy" and refusal["draining"] is True
    assert draining_seen  # the clients were told
    assert thread.server.stats["done"] == 4 and thread.server.stats["cancelled"] == 0


def test_what_the_drain_grace_leaves_is_cancelled():
    thread = ServerThread(lambda: FakeBackend(0.2), drain_grace=0.5).start()
    raw = Raw(thread.url)
    jobs = [raw.edit() for _ in range(4)]  # 1.4 s each: at most one ends within the grace
    until(lambda: thread.server.stats["accepted"] == 4)
    stopper = threading.Thread(target=thread.stop)
    stopper.start()
    ends = {job: message.get("code", message["type"]) for job, message in raw.ends_until_closed(20).items()}
    stopper.join(30)
    assert set(ends) == set(jobs)  # every job ended, once
    assert sorted(ends.values()).count("cancelled") >= 3


@pytest.mark.parametrize("trusted", [True, False])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(trusted: bool):
    proxies = frozenset({"127.0.0.1"}) if trusted else frozenset()
    with running_server(lambda: FakeBackend(), max_connections_per_user=1, trusted_proxies=proxies) as thread:
        first = Raw(thread.url, headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.31"})
        second = Raw(thread.url, headers={"X-Forwarded-For": "10.0.0.32"})
        assert first.greeting["type"] == "status"
        # behind a trusted proxy two artists (10.0.0.31, .32) each hold their own one connection;
        # otherwise both are the proxy's address, and the second is over that address's limit
        assert second.greeting["type"] == ("status" if trusted else "error")
        keys = {c.quota_key for c in thread.server.admission.user_of}
        assert keys == ({("address", "10.0.0.31"), ("address", "10.0.0.32")} if trusted else {("address", "127.0.0.1")})
        first.ws.close()
        second.ws.close()


def test_a_stopped_in_process_server_leaves_no_thread_running():
    """An embedding (or a test) that stops the server gets its threads back: a device thread still
    busy with a last call (a memory trim, a job) ends before `stop` returns, so nothing of this
    engine runs on beside whatever the embedder does next."""
    with running_server([FakeBackend, FakeBackend]) as server:

        async def busy() -> None:
            for worker in server.server.workers:
                worker.thread.submit(threading.Event().wait, 1.0)  # a call the stop finds running

        server.call(busy())
        names = {thread.name for thread in threading.enumerate()}
        assert {"engine-loop", "ffclip-worker-0", "ffclip-worker-1"} <= names
    left = {thread.name for thread in threading.enumerate()} & {"engine-loop", "ffclip-worker-0", "ffclip-worker-1"}
    assert left == set()
