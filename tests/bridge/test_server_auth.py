"""The daemon's bearer token is compared exactly.

A header opens the engine only when it is `Bearer`, one space, the token itself, with nothing but
optional spaces or tabs around the token (what HTTP trims anyway). A prefix or a suffix of the token,
another case, whitespace inside it, an empty credential, another scheme, or two Authorization headers
are refused: as a property of the comparison, and over real connections to an in-process server.
"""

from __future__ import annotations

import json
import re
import string
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.server import EngineServer, ServerConfig
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EngineError
from ffclip.plugin.websocket import ConnectionClosed, HandshakeError, WebSocket

TOKEN = "s3cret"
# what a token may be made of (secrets.token_urlsafe, RFC 6750's b64token) ...
TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/="
# ... and what an HTTP header value can carry (visible ASCII, space, tab)
HEADER_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"


def accepts(header: str | None, token: str) -> bool:
    """The specification, written independently of server.py."""
    return header is not None and re.fullmatch(r"Bearer [ \t]*" + re.escape(token) + r"[ \t]*", header) is not None


def token_ok(token: str | None, header: str | None) -> bool:
    server = EngineServer(ServerConfig(token=token), loader=FakeBackend)
    return server._identify(header) is not None


tokens = st.text(TOKEN_CHARS, min_size=1, max_size=40)
blanks = st.text(" \t", max_size=3)


@st.composite
def near_misses(draw: st.DrawFn, token: str) -> str:
    """Headers one edit away from the right one: the mistakes an attacker or a bad comparison makes."""
    cut = draw(st.integers(0, len(token)))
    other = draw(st.text(HEADER_CHARS, min_size=1, max_size=8))
    credential = draw(
        st.sampled_from(
            [
                token,  # the token itself, after a wrong scheme
                token[:cut],  # a prefix (also the empty credential)
                token[cut:],  # a suffix
                token + other,  # the token and more
                other + token,
                token[:cut] + other + token[cut:],  # something inside, whitespace included
                token.swapcase(),
                token.upper(),
                token + " " + token,
            ]
        )
    )
    scheme = draw(st.sampled_from(["Bearer ", "Bearer", "Bearer\t", "Basic ", "Token ", "Bearer: ", "XBearer ", ""]))
    return scheme + draw(blanks) + credential + draw(blanks)


@given(token=tokens, data=st.data())
@example(token=TOKEN, data=None)
def test_only_the_exact_token_opens(token: str, data: st.DataObject | None) -> None:
    if data is None:  # the planted bug of issue 20: a prefix match let `Bearer s` in
        header = "Bearer s"
    else:
        header = data.draw(st.one_of(near_misses(token), st.text(HEADER_CHARS, max_size=60)))
    assert token_ok(token, header) == accepts(header, token), header


@pytest.mark.parametrize(
    "header",
    ["Bearer s", "Bearer s3cre", "Bearer s3cret!", "Bearers3cret", "Bearer\ts3cret", "bearer s3cret", "Bearer: s3cret"],
)
def test_near_misses_of_the_scheme_and_the_token(header: str) -> None:
    """The mistakes a comparison makes most easily, each spelled out (the property may not draw them)."""
    assert not token_ok(TOKEN, header) and not accepts(header, TOKEN)


@given(token=tokens, before=blanks, after=blanks)
def test_the_token_with_blanks_around_it_opens(token: str, before: str, after: str) -> None:
    assert token_ok(token, "Bearer " + before + token + after)


@given(header=st.one_of(st.none(), st.text(HEADER_CHARS, max_size=40)))
def test_without_a_token_everyone_is_let_in_and_without_a_header_nobody(header: str | None) -> None:
    assert token_ok(None, header) and token_ok("", header)
    assert not token_ok(TOKEN, None)


# --- over real connections -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with running_server(lambda: FakeBackend(0.0), token=TOKEN) as thread:
        yield thread


def refused(url: str, headers: dict[str, str]) -> dict:
    """The handshake succeeds, then the engine says `unauthorized` and closes with 1008."""
    ws = WebSocket.connect(url, headers=headers)
    message = json.loads(ws.recv(10))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(10)
    assert closed.value.code == 1008
    return message


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s",  # prefix
        "Bearer s3cre",
        "Bearer s3cret!",  # suffix
        "Bearer s3crets3cret",
        "Bearer ",  # empty
        "Bearer",
        "Bearer S3CRET",  # case
        "Bearer s3 cret",  # whitespace inside
        "Bearer\ts3cret",
        "Basic s3cret",  # another scheme
        "Token s3cret",
        "s3cret",
    ],
)
def test_a_wrong_authorization_header_is_refused(server, header: str) -> None:
    message = refused(server.url, {"Authorization": header})
    assert message["type"] == "error" and message["code"] == "unauthorized"
    assert "Authorization: Bearer" in message["message"]


def test_no_header_is_refused_and_the_right_one_is_served(server) -> None:
    assert refused(server.url, {})["code"] == "unauthorized"
    ws = WebSocket.connect(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    greeting = json.loads(ws.recv(10))
    assert greeting["type"] == "status" and greeting["auth"] is True
    ws.close()


def test_two_authorization_headers_are_refused_cleanly(server) -> None:
    """A second header must not be a way around the comparison, nor crash the handshake."""
    both = {"Authorization": "Bearer wrong", "authorization": f"Bearer {TOKEN}"}
    assert refused(server.url, both)["code"] == "unauthorized"
    reversed_ = {"authorization": f"Bearer {TOKEN}", "Authorization": "Bearer wrong"}
    assert refused(server.url, reversed_)["code"] == "unauthorized"


def test_two_origin_headers_are_refused_as_a_web_page(server) -> None:
    with pytest.raises(HandshakeError) as info:
        WebSocket.connect(server.url, headers={"Origin": "http://a.example", "origin": "http://b.example"})
    assert info.value.status == 403


def test_the_plugin_client_sends_its_token(server) -> None:
    with EngineClient(server.url, token=TOKEN, timeout=10) as client:
        assert client.status()["auth"] is True
    with pytest.raises(EngineError) as info:
        EngineClient(server.url, token=TOKEN[:-1], timeout=10).connect()
    assert info.value.code == "unauthorized"


def test_refused_web_pages_are_logged_once_per_interval_with_a_count_and_the_origin_cut_short(caplog) -> None:
    origin = "http://evil.example/" + "x" * 300
    server = running_server(lambda: FakeBackend(0.0), token=TOKEN, log_interval=1.0)
    with server as server, caplog.at_level("WARNING", logger="ffclip.bridge"):
        for _ in range(20):
            with pytest.raises(HandshakeError):
                WebSocket.connect(server.url, headers={"Origin": origin, "origin": "http://second.example"})
        lines = [r.getMessage() for r in caplog.records if "web page" in r.getMessage()]
        assert lines == [f"refused 1 connection(s) from web pages (last: Origin: {origin[:100]!r})"]
        time.sleep(1.1)
        with pytest.raises(HandshakeError):
            WebSocket.connect(server.url, headers={"Origin": "http://b.example"})
    lines = [r.getMessage() for r in caplog.records if "web page" in r.getMessage()]
    assert lines[1:] == ["refused 20 connection(s) from web pages (last: Origin: 'http://b.example')"]
