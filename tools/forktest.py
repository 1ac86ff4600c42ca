#!/usr/bin/env python3
"""A pytest fork server: each mutant's test run without paying the imports of torch & co again.

A mutant's test run is mostly start-up: importing torch, numpy, OpenCV and Hypothesis takes 3-4 s
on these machines, while a killed mutant's failing test often takes well under a second. The server
imports those libraries once (never the project itself, whose module is the one being mutated) and
forks a child per run; the child imports the project from the scratch copy, with an empty bytecode
cache (a mutant may have the size and mtime of the original, so a cached .pyc could be taken for
it), and runs `pytest.main`. The client is what cosmic-ray runs as its test command: it sends the
arguments and exits with the child's exit code. When the client goes away (cosmic-ray's timeout
kills it), the server kills the child's process group.

    python tools/forktest.py serve SOCKET [--preload torch numpy ...]   # tools/mutate.py starts it
    python tools/forktest.py run SOCKET -- -x -q tests/engine/test_x.py # one test run
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys
import tempfile

OUTPUT_TAIL = 16384  # bytes of a run's output handed back (its failure summary)
PRELOAD = ["torch", "numpy", "PIL.Image", "cv2", "hypothesis", "pytest", "websockets"]


def serve(path: str, preload: list[str]) -> None:
    for name in preload:
        with contextlib.suppress(ImportError):  # the child imports it itself if a test needs it
            importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        if os.path.exists(path):
            os.unlink(path)
        server.bind(path)
        server.listen(8)
        print("ready", flush=True)
        while True:
            client, _ = server.accept()
            if os.fork() == 0:  # a handler per client, so that two runs may overlap
                server.close()
                _handle(client)
                os._exit(0)
            client.close()
            _reap()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _handle(client: socket.socket) -> None:
    request = json.loads(_read_line(client))
    with tempfile.TemporaryFile() as output:
        child = os.fork()
        if child == 0:
            client.close()
            os.setpgid(0, 0)
            os._exit(_run_pytest(request["cwd"], request["args"], output.fileno()))
        code = _wait(child, client)
        output.seek(0, os.SEEK_END)
        output.seek(max(0, output.tell() - OUTPUT_TAIL))
        said = output.read().decode("utf-8", "replace")
    with contextlib.suppress(OSError):
        client.sendall(json.dumps({"code": code, "output": said}).encode() + b"\n")


def _wait(child: int, client: socket.socket) -> int:
    """The child's exit code; the child's whole process group killed if the client goes away."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status) & 0xFF
        readable, _, _ = select.select([client], [], [], 0.05)
        if readable and not client.recv(1):  # EOF: the client was killed (a timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return 124


def _run_pytest(cwd: str, args: list[str], output: int) -> int:
    os.chdir(cwd)
    sys.path.insert(0, cwd)  # as `python -m pytest` run in cwd has it
    sys.pycache_prefix = tempfile.mkdtemp(prefix="forktest-pyc-")  # no .pyc of another mutant
    sys.dont_write_bytecode = True
    os.dup2(output, 1)
    os.dup2(output, 2)
    try:
        import pytest

        # the preloaded hypothesis plug-in cannot be assertion-rewritten; that is no news per mutant
        return int(pytest.main(["-W", "ignore::pytest.PytestAssertRewriteWarning", *args]))
    except BaseException:  # noqa: BLE001 - any crash of the run is a failed run
        return 1


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def run(path: str, args: list[str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"cwd": os.getcwd(), "args": args}).encode() + b"\n")
        reply = _read_line(sock).strip()
    if not reply:
        return 1
    answer = json.loads(reply)
    sys.stdout.write(answer["output"])  # cosmic-ray keeps it with the mutant's result
    return int(answer["code"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="import the libraries once and fork a child per test run")
    serving.add_argument("socket")
    serving.add_argument("--preload", nargs="*", default=PRELOAD)
    running = commands.add_parser("run", help="one pytest run in the server (arguments after --)")
    running.add_argument("socket")
    running.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.socket, args.preload)
        return 0
    return run(args.socket, args.args[1:] if args.args[:1] == ["--"] else args.args)


if __name__ == "__main__":
    sys.exit(main())
