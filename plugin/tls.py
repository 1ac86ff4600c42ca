"""How a client verifies the engine's TLS certificate (wss://), standard library only.

Three ways, as the plug-in's settings and `ffclip-engine edit` offer them:

- the system's trust store (nothing configured): the certificate must chain to a trusted CA and
  name the host;
- a CA file (`ca_file`): the same, against that CA (a studio's own CA) instead of the system's;
- a pinned SHA-256 fingerprint (`fingerprint`) of the engine's certificate: exactly that
  certificate, whoever signed it (a self-signed certificate made for one server). With a CA file as
  well, both must hold.

Every check happens right after the TLS handshake and before the websocket handshake, so neither the
token nor an image ever reaches a server that fails it (`CertificateRefused`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from .protocol import EngineError

_HEX = set("0123456789abcdef")


class CertificateRefused(EngineError):
    """The engine's certificate failed verification: nothing was sent to it."""

    def __init__(self, message: str):
        super().__init__("certificate", message)


class PlainTokenRefused(EngineError):
    """A token would have crossed the network unencrypted (plain ws:// to another computer): nothing
    was sent."""

    def __init__(self, host: str):
        super().__init__(
            "certificate",
            f"not sending the token over plain ws:// to {host}: anyone on the network could read and reuse it. "
            "Use the engine's wss:// address (docs/deployment.md), or allow it with the setting "
            "insecure_plain_token (ffclip-engine edit: --insecure-plain-token)",
        )


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this computer (a token sent there never crosses a network)."""
    host = host.strip("[]").lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


def check_plain_token(url: str, token: str | None, allowed: bool) -> None:
    """PlainTokenRefused when `token` would go over plain ws:// to another computer and that was not
    explicitly `allowed`."""
    parts = urlsplit(url)
    if token and parts.scheme == "ws" and not allowed and not is_loopback_host(parts.hostname or ""):
        raise PlainTokenRefused(parts.hostname or url)


def normalize_fingerprint(text: str) -> str:
    """`AB:CD:…`, `sha256:abcd…`, `SHA256 Fingerprint=AB:CD…` (openssl's output) → 64 lowercase hex
    digits; ValueError for anything else."""
    value = text.strip()
    if "=" in value:  # openssl x509 -fingerprint -sha256 prints "sha256 Fingerprint=AA:BB:..."
        value = value.split("=", 1)[1]
    lowered = value.lower()
    if lowered.startswith("sha256:"):
        lowered = lowered[len("sha256:") :]
    digits = "".join(c for c in lowered if c not in ": \t")
    if len(digits) != 64 or not set(digits) <= _HEX:
        raise ValueError(
            f"not a SHA-256 certificate fingerprint: {text.strip()[:100]!r} (expected 64 hex digits, "
            "e.g. the output of: openssl x509 -noout -fingerprint -sha256 -in CERT)"
        )
    return digits


def format_fingerprint(digits: str) -> str:
    """64 hex digits as `AB:CD:…`, the way openssl and browsers show them."""
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2)).upper()


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint (64 lowercase hex digits) of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem_path: str) -> str:
    """The SHA-256 fingerprint of the first certificate of a PEM file."""
    with open(pem_path, encoding="ascii", errors="replace") as f:
        text = f.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{pem_path} holds no PEM certificate")
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)]))


@dataclass(frozen=True)
class TLSVerify:
    """What a wss:// connection must prove. Both empty: the system's trust store."""

    ca_file: str | None = None
    fingerprint: str | None = None  # normalized: 64 lowercase hex digits

    @classmethod
    def make(cls, ca_file: str | None = None, fingerprint: str | None = None) -> TLSVerify:
        """From settings or options (blank values mean unset); ValueError for a bad fingerprint."""
        ca = (ca_file or "").strip() or None
        pin = normalize_fingerprint(fingerprint) if fingerprint and fingerprint.strip() else None
        return cls(ca, pin)

    def context(self) -> ssl.SSLContext:
        """The TLS context to connect with. A pin alone disables the chain check: the pin is stronger."""
        if self.fingerprint and not self.ca_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateRefused(f"cannot read the CA file {self.ca_file}: {exc}") from None

    def check_peer(self, sock: ssl.SSLSocket, where: str) -> None:
        """After the TLS handshake: the pinned fingerprint, if any, must match the certificate."""
        if not self.fingerprint:
            return
        der = sock.getpeercert(binary_form=True)
        if not der:
            raise CertificateRefused(f"the engine at {where} presented no certificate; nothing was sent")
        got = certificate_fingerprint(der)
        if not hmac.compare_digest(got, self.fingerprint):
            raise CertificateRefused(
                f"the engine at {where} presented a certificate with SHA-256 fingerprint {format_fingerprint(got)}, "
                f"but {format_fingerprint(self.fingerprint)} is pinned; nothing was sent (no token, no image). "
                "If the server's certificate was replaced on purpose, pin the new fingerprint; otherwise "
                "something else answers at that address."
            )

    def describe(self) -> str:
        if self.fingerprint:
            pinned = f"the pinned fingerprint {format_fingerprint(self.fingerprint)[:23]}…"
            return pinned + (f" and the CA file {self.ca_file}" if self.ca_file else "")
        return f"the CA file {self.ca_file}" if self.ca_file else "the system's trust store"


def refusal(exc: ssl.SSLCertVerificationError, where: str, tls: TLSVerify | None) -> CertificateRefused:
    """A failed chain or host name check, as the error the user reads."""
    how = (tls or TLSVerify()).describe()
    detail = exc.verify_message or str(exc)
    return CertificateRefused(
        f"the engine's certificate at {where} is not trusted ({detail}), checked against {how}; nothing was "
        "sent. Give the CA that signed it (a CA file) or pin its SHA-256 fingerprint (shown by the engine "
        "when it starts)."
    )
