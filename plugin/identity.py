"""Whether the engine on a local port is one of this user's (standard library only).

Anyone on the computer can listen on 127.0.0.1:8765 before our engine does, and would then receive the
photos (and any token) of a plug-in that starts its engine itself. So each engine writes a random key
into its record `<state>/engines/<pid>.json` — a file only its user can read (0600 in a 0700 folder) —
and answers a client's challenge (a nonce in the handshake's `X-FFCLIP-Challenge` header) with an
HMAC of it under that key, in its greeting's `proof`. A client that started its engine checks the
proof against the keys in the records before it sends anything but the handshake.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from .paths import ENGINES_DIR, open_private, private_folder, state_dir
from .protocol import EngineError

CHALLENGE_HEADER = "X-FFCLIP-Challenge"
CHALLENGE_LENGTH = 32  # hex digits
# A random id per user (kept in the state folder), sent in every handshake: a load balancer hashes it
# to keep one artist's connections — plug-in, live dialog, FFCLIP Cancel, CLI — on the engine that
# holds their photos' inversions (deploy/haproxy/haproxy.cfg). It names nobody.
CLIENT_HEADER = "X-FFCLIP-Client"
CLIENT_ID_FILE = "client-id"
_client_id: str | None = None


class NotOurEngine(EngineError):
    """The program on the local port is not an FFCLIP engine of this user: nothing was sent to it."""

    def __init__(self, url: str):
        super().__init__(
            "identity",
            f"the program answering at {url} is not an FFCLIP engine started by this user (it cannot prove "
            "the key in this user's engine records): nothing was sent to it. Stop that program or choose "
            "another port (ffclip-engine doctor names it); if it is an engine you run yourself elsewhere (a "
            "container), turn the plug-in's autostart off",
        )


def new_key() -> str:
    """An engine's key, for its record."""
    return secrets.token_hex(32)


def new_challenge() -> str:
    return secrets.token_hex(CHALLENGE_LENGTH // 2)


def proof(key: str, challenge: str) -> str:
    """The engine's answer to `challenge`."""
    return hmac.new(key.encode("ascii"), b"ffclip-engine:" + challenge.encode("ascii"), hashlib.sha256).hexdigest()


def is_challenge(value: str | None) -> bool:
    return value is not None and len(value) == CHALLENGE_LENGTH and all(c in "0123456789abcdef" for c in value)


def is_client_id(value: str | None) -> bool:
    return is_challenge(value)  # the same form: 32 hex digits


def client_id(folder: Path | None = None) -> str:
    """This user's client id: read from (or created in) the state folder, so that every process of the
    user routes alike; a random one for this process when the folder cannot be written."""
    global _client_id
    if folder is None and _client_id is not None:
        return _client_id
    path = (folder or state_dir()) / CLIENT_ID_FILE
    try:
        found = path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        found = None
    if not is_client_id(found):
        found = new_challenge()
        with contextlib.suppress(OSError):
            private_folder(path.parent)
            with open_private(path, "w", encoding="ascii") as file:
                file.write(found + "\n")
    if folder is None:
        _client_id = found
    return found


def local_keys(port: int, folder: Path | None = None) -> list[str]:
    """The keys of this user's engine records that listen on `port`."""
    keys = []
    for path in (folder or state_dir() / ENGINES_DIR).glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            url, key = record.get("url"), record.get("key")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(key, str) and isinstance(url, str) and _port(url) == port:
            keys.append(key)
    return keys


def check(greeting: dict, challenge: str, url: str, folder: Path | None = None) -> None:
    """NotOurEngine unless the greeting proves one of this user's engine keys for `url`'s port."""
    answer = greeting.get("proof")
    port = _port(url)
    if isinstance(answer, str) and port is not None:
        for key in local_keys(port, folder):
            if hmac.compare_digest(answer, proof(key, challenge)):
                return
    raise NotOurEngine(url)


def _port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        return None
