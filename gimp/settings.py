"""Settings of the GIMP plug-in and the small state file that lets **FFCLIP Cancel** reach a job.

Standard library only: this module is copied into the GIMP plug-in folder (app/install.py).

Settings live in `ffclip-edit.json` next to the plug-in entry; `ffclip-engine install-gimp-plugin`
writes it, the dialog updates the engine URL in it. Keys:

- `url`: engine websocket URL (default `ffclip.plugin.protocol.DEFAULT_URL`); `FFCLIP_ENGINE_URL` overrides it
  when the caller gives no URL.
- `token`: optional bearer token for the daemon.
- `tls_ca_file`: for a `wss://` URL, the CA file that signed the engine's certificate (default: the
  system's trust store).
- `tls_fingerprint`: for a `wss://` URL, the engine certificate's pinned SHA-256 fingerprint
  (`AB:CD:…`, as `serve` prints it); any other certificate is refused before anything is sent.
- `insecure_plain_token`: send the token over plain `ws://` to another computer (refused without it:
  anyone on the network could read it; serve `wss://` instead).
- `autostart`: start the engine when it is not reachable (only for a local URL).
- `start_command`: argv list that starts the daemon (`ffclip-engine serve ...`).
- `precision`: the arithmetic of an engine the plug-in starts (`auto`, `fp32`, `bf16`, `fp16`; `serve
  --precision`); unset: the engine's default (auto: bf16 previews where the processor has it).
- `start_timeout`: seconds to wait for a started daemon to accept connections.
- `timeout`: seconds of silence from the engine before a job is given up.
- `recent_prompts`: prompts of the last applied edits, offered first by the dialog's completion.
- `domain`: what the last applied edit edited (face, car, church); the dialog opens with it.
- `presets`: named sets of the dialog's rows, {name: [[prompt, strength], ...]}.
- `last_edit`: the last edit a script applied (the procedure's arguments), for Filters > Repeat
  (GIMP keeps the last values of a dialog's run itself, not of a script's).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from ffclip.plugin.paths import JOB_STATE, runtime_dir
from ffclip.plugin.protocol import DEFAULT_PORT, DEFAULT_URL
from ffclip.plugin.tls import TLSVerify

SETTINGS_NAME = "ffclip-edit.json"
DEFAULTS: dict = {
    "url": DEFAULT_URL,
    "token": None,
    "tls_ca_file": None,
    "tls_fingerprint": None,
    "insecure_plain_token": False,
    "autostart": False,
    "start_command": None,
    "precision": None,
    "start_timeout": 120.0,
    "timeout": 600.0,
    "recent_prompts": [],  # the live dialog's completion, most recent first
    "domain": "face",  # the live dialog's last domain
    "presets": {},  # the live dialog's named rows
    "last_edit": None,  # a script's last edit, for WITH_LAST_VALS
}


def load_settings(plugin_dir: str | os.PathLike | None) -> dict:
    """Defaults, overlaid with the settings file of `plugin_dir` (a broken file is ignored)."""
    settings = dict(DEFAULTS)
    if plugin_dir is not None:
        path = Path(plugin_dir) / SETTINGS_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            settings.update({k: v for k, v in data.items() if k in DEFAULTS})
    return settings


def save_settings(plugin_dir: str | os.PathLike, settings: dict) -> Path:
    """Write the known keys of `settings` atomically; returns the file written."""
    path = Path(plugin_dir) / SETTINGS_NAME
    data = {k: settings.get(k, v) for k, v in DEFAULTS.items()}
    write_json_atomic(path, data)
    return path


def tls_verify(settings: dict) -> TLSVerify:
    """How a wss:// engine's certificate is checked (ValueError for a malformed fingerprint)."""
    ca, pin = settings.get("tls_ca_file"), settings.get("tls_fingerprint")
    return TLSVerify.make(ca if isinstance(ca, str) else None, pin if isinstance(pin, str) else None)


def resolve_url(given: str | None, settings: dict, environ: dict | None = None) -> str:
    """The URL to use: the argument, else `FFCLIP_ENGINE_URL`, else the saved setting."""
    environ = os.environ if environ is None else environ
    for candidate in (given, environ.get("FFCLIP_ENGINE_URL"), settings.get("url"), DEFAULT_URL):
        if candidate and str(candidate).strip():
            return normalize_url(str(candidate))
    return DEFAULT_URL


def normalize_url(url: str) -> str:
    """Accept `host:port`, `http(s)://` and `ws(s)://`; return a ws(s) URL."""
    url = url.strip()
    if "://" not in url:
        url = "ws://" + url
    scheme, rest = url.split("://", 1)
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("ws", "wss"):
        raise ValueError(f"engine URL must start with ws:// or wss://, not {scheme}://")
    if not rest or rest.startswith("/"):
        raise ValueError(f"engine URL has no host: {url}")
    return f"{scheme}://{rest}"


def is_local_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")


def url_port(url: str, default: int = DEFAULT_PORT) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


# --------------------------------------------------------------------------- running job state


def job_state_path(environ: dict | None = None) -> Path:
    return runtime_dir(environ) / JOB_STATE


def write_job_state(url: str, job_id: str, token: str | None = None, environ: dict | None = None) -> Path:
    path = job_state_path(environ)
    write_json_atomic(path, {"url": url, "id": job_id, "token": token, "pid": os.getpid(), "started": time.time()})
    return path


def read_job_state(environ: dict | None = None) -> dict | None:
    """The running job, or None (no file, unreadable, or its plug-in process is gone)."""
    path = job_state_path(environ)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("id") or not data.get("url"):
        return None
    pid = data.get("pid")
    if isinstance(pid, int) and not _pid_alive(pid):
        data["stale"] = True
    return data


def clear_job_state(job_id: str | None = None, environ: dict | None = None) -> None:
    """Remove the state file; with `job_id`, only when it still names that job."""
    path = job_state_path(environ)
    if job_id is not None:
        current = read_job_state(environ)
        if current is not None and current.get("id") != job_id:
            return
    with contextlib.suppress(OSError):
        path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def write_json_atomic(path: Path, data: dict) -> None:
    """`data` as JSON in `path`, replaced whole (a reader never sees half a file), readable by this
    user only (mkstemp's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
