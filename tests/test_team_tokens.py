"""Named tokens (`serve --tokens-file F`, issue 15): one per artist, revocable by editing the file,
the log names the owner and never the token, the comparison stays constant-time."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from test_bridge_daemon import run_cli

from ffclip.bridge import tokens as tk
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, EngineError, ImageSpec
from ffclip.plugin.websocket import ConnectionClosed, WebSocket

ALICE = "alice-token-Zr1-8mWqkU2c0d9yq3rX"
BOB = "bob-token-b2ZxQ9t7W1y3N5e8R0a6L4"
BOB2 = "bob-new-token-Q9t7W1y3N5e8R0a6L"
PHOTO = np.random.default_rng(5).integers(0, 256, (48, 64, 4), dtype=np.uint8)


def write(path: Path, text: str) -> None:
    """Replace the file the way editors do (a new inode), so the change is always visible."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --------------------------------------------------------------------------- the file


def test_tokens_file_rules_name_the_line_never_the_token():
    assert set(tk.parse_tokens(f"# team\n\nalice {ALICE}\nbob\t{BOB}  \n")) == {"alice", "bob"}
    cases = {
        f"alice {ALICE} extra": "line 1: expected 'NAME TOKEN'",
        f"al/ice {ALICE}": "line 1: a name is",
        "alice short": "shorter than 16",
        f"alice {ALICE}\nalice {BOB}": "line 2: alice appears twice",
        f"alice {ALICE}\nbob {ALICE}": "line 2: bob has the same token as alice",
    }
    for text, expected in cases.items():
        with pytest.raises(tk.TokensFileError) as info:
            tk.parse_tokens(text)
        assert expected in str(info.value)
        assert ALICE not in str(info.value) and BOB not in str(info.value)


def test_identify_compares_every_entry_in_constant_time(monkeypatch):
    book = tk.TokenBook(tk.parse_tokens(f"alice {ALICE}\nbob {BOB}\ncarol {BOB2}"))
    assert book.identify(bearer(ALICE)).owner == "alice" and book.identify(bearer(BOB2)).owner == "carol"
    for header in (None, "", ALICE, f"Basic {ALICE}", bearer(ALICE[:-1]), bearer(ALICE + "x")):
        assert book.identify(header) is None
    calls = []
    real = tk.hmac.compare_digest
    monkeypatch.setattr(tk.hmac, "compare_digest", lambda a, b: calls.append(len(a)) or real(a, b))
    for header in (bearer(ALICE), bearer(BOB2), bearer("nobody-0123456789abcdef")):
        calls.clear()
        book.identify(header)
        assert calls == [32, 32, 32]  # every entry, equal-length digests, whichever matched (or none)


def test_serve_refuses_an_unusable_tokens_file(tmp_path):
    missing = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot read the tokens file" in missing.stderr
    bad = tmp_path / "tokens"
    bad.write_text(f"alice {ALICE}\nbob short\n")
    refused = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(bad))
    assert refused.returncode == 2 and "line 2: bob's token is shorter" in refused.stderr
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    assert "names nobody" in run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(empty)).stderr
    both = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(bad), "--token", "x")
    assert both.returncode == 2 and "not both" in both.stderr


# --------------------------------------------------------------------------- the engine


@pytest.fixture()
def team(tmp_path):
    path = tmp_path / "tokens"
    write(path, f"alice {ALICE}\nbob {BOB}\n")
    book = tk.TokenBook.from_file(path)
    with running_server(lambda: FakeBackend(0.0), tokens=book, tokens_interval=0.05) as server:
        yield server, path


def _connect(url: str, token: str) -> WebSocket:
    ws = WebSocket.connect(url, headers={"Authorization": bearer(token)})
    greeting = json.loads(ws.recv(10))
    assert greeting["type"] == "status", greeting
    return ws


def _refused(url: str, token: str) -> bool:
    with pytest.raises(EngineError) as info:
        EngineClient(url, token=token, timeout=5).connect()
    return info.value.code == "unauthorized"


def test_the_log_names_the_owner_never_the_token(team, caplog):
    server, _ = team
    with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
        for token in (ALICE, BOB):
            with EngineClient(server.url, token=token, timeout=10) as client:
                assert client.last_status["auth"] is True and client.last_status["users"] == 2
                client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(64, 48))
        assert _refused(server.url, "wrong-token-0123456789")
    text = caplog.text
    assert "connected as alice" in text and "connected as bob" in text and "queued as bob" in text
    assert "refused a client without a valid token" in text
    assert ALICE not in text and BOB not in text and "wrong-token" not in text


def test_removing_a_line_revokes_at_once_and_closes_open_connections(team):
    server, path = team
    alice, bob = _connect(server.url, ALICE), _connect(server.url, BOB)
    write(path, f"alice {ALICE}\n")  # bob leaves the team
    message = json.loads(bob.recv(10))
    assert message["type"] == "error" and message["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed) as closed:
        bob.recv(10)
    assert closed.value.code == 1008
    assert _refused(server.url, BOB)
    alice.send_text('{"type": "status"}')  # alice is not disturbed
    assert json.loads(alice.recv(10))["type"] == "status"
    write(path, f"alice {ALICE}\nbob {BOB2}\n")  # bob comes back with a new token
    deadline = time.monotonic() + 5
    while True:
        try:
            with EngineClient(server.url, token=BOB2, timeout=5) as client:
                assert client.last_status["users"] == 2
            break
        except EngineError:
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.05)
    assert _refused(server.url, BOB)  # the old one stays revoked
    alice.close()


def test_changing_a_token_revokes_the_old_one(team):
    server, path = team
    bob = _connect(server.url, BOB)
    write(path, f"alice {ALICE}\nbob {BOB2}\n")
    assert json.loads(bob.recv(10))["code"] == "unauthorized"
    assert _refused(server.url, BOB)
    with EngineClient(server.url, token=BOB2, timeout=5):
        pass


def test_a_broken_or_missing_file_refuses_everyone_until_fixed(team):
    server, path = team
    write(path, f"alice {ALICE}\nbob\n")  # half-edited
    assert _refused(server.url, ALICE)
    path.unlink()
    assert _refused(server.url, ALICE)
    write(path, f"alice {ALICE}\n")
    with EngineClient(server.url, token=ALICE, timeout=5) as client:
        assert client.last_status["users"] == 1
