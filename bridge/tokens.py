"""Who may use the engine: one token (`serve --token`) or named tokens (`serve --tokens-file F`).

A tokens file holds one artist per line, `NAME TOKEN` (blank lines and `#` comments ignored):

    # name      token (python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
    alice       Zr1-8mWqkU2c0d9yq3rX3Pj4b0Gm7n6T5u1Vw2Ea8s
    bob         b2ZxQ9t7W1y3N5e8R0a6L4k2J9h7G5f3D1s8A6q4Pz

It is re-read when it changes (its size, time or inode), checked at every connection and every
second by the server, so a line removed (or a token changed) revokes that artist at once: new
connections are refused and open ones are closed. A file that disappears or stops parsing refuses
everyone until it is fixed: an edit must never leave a revoked token working.

Only SHA-256 digests of the tokens are kept. A presented token is compared with every entry in
constant time (no early exit), so the time taken says nothing about which entry matched or how
much of a token was right. The log names the owner, never the token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ffclip.bridge")

SINGLE_OWNER = "token"  # the name of `--token`'s one token in logs and status
MIN_TOKEN_LENGTH = 16  # a tokens file's tokens; `--token` keeps accepting what it always did
_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names the line, never a token."""


@dataclass(frozen=True)
class Identity:
    """An authorised client: the token's owner and its digest (to notice a revocation later)."""

    owner: str
    digest: bytes


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, where: str = "the tokens file") -> dict[str, bytes]:
    """`NAME TOKEN` lines → {name: sha256(token)}; TokensFileError naming the line on any problem — by its
    number only: a line's words are never repeated (with its columns swapped, the "name" is a token)."""
    entries: dict[str, bytes] = {}
    lines_of: dict[str, int] = {}
    owners: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokensFileError(f"{where}, line {number}: expected 'NAME TOKEN' (two words), got {len(parts)}")
        name, token = parts
        if not _NAME.fullmatch(name):
            raise TokensFileError(f"{where}, line {number}: a name is letters, digits and ._@+- (up to 64)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokensFileError(
                f"{where}, line {number}: the token (the second word: NAME comes first) is shorter than "
                f"{MIN_TOKEN_LENGTH} characters; make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if name in entries:
            raise TokensFileError(f"{where}, line {number}: its name is already on line {lines_of[name]}")
        digest = token_digest(token)
        if digest in owners:
            raise TokensFileError(f"{where}, line {number}: its token is already on line {owners[digest]}")
        entries[name], lines_of[name], owners[digest] = digest, number, number
    return entries


class TokenBook:
    """The tokens the engine accepts, by owner; `refresh` re-reads a tokens file that changed."""

    def __init__(self, entries: dict[str, bytes], path: Path | None = None):
        self._entries = dict(entries)
        self.path = path
        self.error: str | None = None  # why a changed file is refused (everyone is, meanwhile)
        self._signature = _signature(path) if path is not None else None

    @classmethod
    def single(cls, token: str) -> TokenBook:
        return cls({SINGLE_OWNER: token_digest(token)})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TokenBook:
        """Read a tokens file at start: TokensFileError when it is unusable or empty."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise TokensFileError(f"cannot read the tokens file {path}: {why}") from None
        entries = parse_tokens(text, str(path))
        if not entries:
            raise TokensFileError(f"the tokens file {path} names nobody: add a line 'NAME TOKEN'")
        _warn_if_readable(path)
        return cls(entries, path)

    @property
    def owners(self) -> list[str]:
        return sorted(self._entries)

    def identify(self, header: str | None) -> Identity | None:
        """The owner of the `Authorization: Bearer TOKEN` header, or None. Constant time over all
        entries: every one is compared, whatever matched."""
        if not header or not header.startswith("Bearer "):
            return None
        digest = token_digest(header[7:].strip())
        found = None
        for owner, expected in self._entries.items():
            if hmac.compare_digest(digest, expected):
                found = owner
        return Identity(found, digest) if found is not None else None

    def holds(self, identity: Identity) -> bool:
        """Whether an identity accepted earlier is still valid (same owner, same token)."""
        expected = self._entries.get(identity.owner)
        return expected is not None and hmac.compare_digest(expected, identity.digest)

    def refresh(self) -> bool:
        """Re-read the tokens file when it changed; True when the accepted tokens changed."""
        if self.path is None:
            return False
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        before = dict(self._entries)
        try:
            self._entries = parse_tokens(self.path.read_text(encoding="utf-8"), str(self.path))
            self.error = None
        except (OSError, UnicodeDecodeError, TokensFileError) as exc:
            self._entries = {}  # fail closed: a half-edited file must not keep a revoked token alive
            self.error = str(exc) if isinstance(exc, TokensFileError) else f"cannot read {self.path}: {exc}"
            log.error("tokens file unusable, refusing every client until it is fixed: %s", self.error)
            return before != self._entries
        added = sorted(set(self._entries) - set(before))
        removed = sorted(set(before) - set(self._entries))
        changed = sorted(n for n in set(before) & set(self._entries) if before[n] != self._entries[n])
        if added or removed or changed:
            log.info(
                "tokens file re-read: %d tokens; added %s; revoked %s; changed %s",
                len(self._entries),
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
                ", ".join(changed) or "none",
            )
        return before != self._entries


def _signature(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)


def _warn_if_readable(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("the tokens file %s is readable by other users: chmod 600 it", path)
