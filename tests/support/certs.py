"""Test certificates made with Debian's openssl: a CA, a server certificate it signs for 127.0.0.1,
and an impostor (a self-signed certificate for the same address, another key)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ffclip.plugin.tls import pem_fingerprint

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    impostor_cert: Path
    impostor_key: Path

    @property
    def fingerprint(self) -> str:
        return pem_fingerprint(str(self.cert))

    @property
    def impostor_fingerprint(self) -> str:
        return pem_fingerprint(str(self.impostor_cert))

    def server_context(self, impostor: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if impostor:
            context.load_cert_chain(self.impostor_cert, self.impostor_key)
        else:
            context.load_cert_chain(self.cert, self.key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr}")


def make_certs(folder: Path) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl(
        "req",
        "-x509",
        *_EC,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=FFCLIP test CA",
        *ca_ext,
        cwd=folder,
    )
    _openssl("req", *_EC, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        cwd=folder,
    )
    _openssl(
        "req",
        "-x509",
        *_EC,
        "-keyout",
        "impostor.key",
        "-out",
        "impostor.pem",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        cwd=folder,
    )
    return Certs(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "impostor.pem",
        folder / "impostor.key",
    )
