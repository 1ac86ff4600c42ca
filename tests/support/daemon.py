"""The engine daemon as a process (`ffclip-engine serve`): started, its port read from its first line, stopped by a
signal; and the CLI run as a process."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections import deque


class Daemon:
    def __init__(self, *args: str, env: dict | None = None, open_files: int | None = None):
        """`open_files`: the daemon's limit on open files, soft and hard (as a tight system would set it)."""
        command = [sys.executable, "-m", "ffclip.app", "serve", *args]
        limit = None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2)
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or daemon_env(),
            preexec_fn=limit,  # noqa: PLW1509 - sets one limit, no locks involved
        )
        # the daemon logs to stderr as it works: read it as it comes, or a full pipe would stop it
        self.log: deque[str] = deque(maxlen=500)
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        line = self.proc.stdout.readline()
        match = re.search(r"listening on ws://[^:]+:(\d+)/", line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no listening line: {line!r} {''.join(self.log)}")
        self.port = int(match.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def daemon_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ffclip.app", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env or daemon_env())


def tiny_daemon(log: str | os.PathLike) -> Daemon:
    """`serve --profile tiny` on the CPU, its models loaded (a client's first edit does not wait)."""
    import time

    from ffclip.plugin.client import EngineClient

    process = Daemon("--port", "0", "--profile", "tiny", "--device", "cpu", "--log-file", str(log))
    client = EngineClient(process.url, timeout=120)
    client.connect()
    while client.status()["state"] == "loading":
        time.sleep(0.2)
    client.close()
    return process
