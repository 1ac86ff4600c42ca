"""`ffclip-engine serve`'s limits and token options (app/cli/serve.py; issue 30)."""

from __future__ import annotations

import argparse
import socket

import pytest

from ffclip.app.cli.serve import parse_size
from ffclip.plugin.client import EngineClient
from tests.support.daemon import Daemon, run_cli


def test_sizes_read_as_people_write_them() -> None:
    assert parse_size("2G") == 2 << 30 and parse_size("512M") == 512 << 20 and parse_size("512MB") == 512 << 20
    assert parse_size("1.5g") == 3 << 29 and parse_size("4096") == 4096 and parse_size("2GiB") == 2 << 30
    for bad in ("lots", "", "G", "2X"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a size such as 2G"):
            parse_size(bad)


@pytest.mark.process
def test_the_limits_given_are_the_limits_in_force() -> None:
    daemon = Daemon(
        "--port", "0", "--fake-engine", "--max-connections", "64", "--max-connections-per-user", "4",
        "--memory-budget", "256M", "--request-timeout", "30",
    )  # fmt: skip
    try:
        limits = EngineClient(daemon.url, timeout=10).connect()["limits"]
    finally:
        daemon.stop()
    assert limits["max_connections"] == 64 and limits["max_connections_per_user"] == 4
    assert limits["memory_budget_bytes"] == 256 << 20 and limits["request_timeout_s"] == 30.0


@pytest.mark.process
@pytest.mark.parametrize(
    "option",
    [
        ["--max-connections", "2"],
        ["--max-connections-per-user", "0"],
        ["--max-connections", "16", "--max-connections-per-user", "17"],
        ["--memory-budget", "1M"],
        ["--request-timeout", "0"],
    ],
)
def test_limits_that_would_lock_everyone_out_are_refused(option) -> None:
    refused = run_cli("serve", "--port", "0", "--fake-engine", *option)
    assert refused.returncode == 2 and refused.stderr.startswith("ffclip-engine serve: --"), refused.stderr


@pytest.mark.process
def test_a_token_on_the_command_line_is_warned_about(tmp_path) -> None:
    with socket.socket() as busy:  # the port is taken: serve says so and stops, after its warning
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = run_cli("serve", "--port", port, "--fake-engine", "--token", "s" * 32, "--log-file", str(tmp_path / "l"))
        assert "visible to every user of this computer in the process list" in out.stderr
        (tmp_path / "t").write_text("s" * 32)
        out = run_cli("serve", "--port", port, "--fake-engine", "--token-file", str(tmp_path / "t"))
        assert "process list" not in out.stderr and "s" * 32 not in out.stderr + out.stdout
