#!/usr/bin/env python3
"""Mutation testing of one module with cosmic-ray, against the tests that guard it.

    python tools/mutate.py engine/checkpoints/safe_load.py            # run (or resume), then report
    python tools/mutate.py bridge/server.py --only _check_request _identify
    python tools/mutate.py engine/face/blend.py --report              # report an earlier run only
    python tools/mutate.py engine/face/blend.py --tests tests/engine/face/test_blend_change_mask.py

cosmic-ray mutates the module's file in place, one mutant at a time, and runs the tests. So that
the checkout itself is never mutated (a commit or another test run could pick a mutant up), every run
works in a scratch copy, .mutation/NAME/work, whose `ffclip` package shadows the editable install
(PYTHONPATH; the copy's `ffclip/engine` etc. link to its own folders). The session database
(.mutation/NAME/session.sqlite) makes a run resumable: run the same command again to continue.
A module's tests are found by the layout (`tests_for`: tests/<folder>/test_<name>*.py, the module's
own file first, since pytest stops at the first failure (-x) and a killed mutant then costs only
those); `--tests` names others. Results: docs/testing.md.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ffclip.X -> its folder
PACKAGES = {"plugin": "plugin", "engine": "engine", "bridge": "bridge", "app": "app", "gimp": "gimp"}


def tests_for(module: str) -> list[str]:
    """The tests that guard `module`, found by the layout the tests mirror (docs/testing.md):
    tests/<its folder>/test_<name>.py first, then its aspects, tests/<its folder>/test_<name>_*.py
    (e.g. engine/face/blend.py: tests/engine/face/test_blend.py, test_blend_change_mask.py)."""
    path = Path(module)
    folder = REPO / "tests" / path.parent
    exact = folder / f"test_{path.stem}.py"
    found = ([exact] if exact.is_file() else []) + sorted(folder.glob(f"test_{path.stem}_*.py"))
    return [p.relative_to(REPO).as_posix() for p in found]


# Operators left out, with the reason (docs/testing.md repeats it):
# - a binary operator replaced by a shift or a bitwise one, or by **, % or //, on float arrays and
#   tensors only raises TypeError or produces inf/nan at once: hundreds of mutants that say nothing,
#   at 5-30 s each. Kept for the integer code of framing.py, where they are meaningful.
FLOAT_MODULES = {"engine/face/blend.py", "engine/models/mapper.py"}
FLOAT_EXCLUDED = [r"core/ReplaceBinaryOperator_.*_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)$"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="a module path relative to the repository, e.g. bridge/framing.py")
    parser.add_argument("--tests", nargs="+", help="test files (default: the module's list in this script)")
    parser.add_argument("--only", nargs="+", metavar="FUNC", help="mutate only inside these functions")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 4x the baseline run)")
    parser.add_argument("--report", action="store_true", help="only print the report of an earlier run")
    parser.add_argument("--fresh", action="store_true", help="start a new session (default: resume)")
    parser.add_argument(
        "--no-fork", action="store_true", help="start each test run afresh, without tools/forktest.py's fork server"
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="run only a random N of the pending mutants (seeded; the rest are skipped as outside the "
        "sample, a score on a random sample estimates the whole; --whole runs them later)",
    )
    parser.add_argument("--whole", action="store_true", help="run the mutants an earlier --sample left out")
    parser.add_argument(
        "--confirm",
        type=int,
        metavar="N",
        help="run N random mutants killed in the session again with plain pytest (no fork server): "
        "the verdicts must agree",
    )
    parser.add_argument(
        "--rerun-survivors", action="store_true", help="run the surviving mutants again (after adding tests)"
    )
    parser.add_argument(
        "--rerun-timeouts",
        action="store_true",
        help="run the timed-out mutants again (with a longer --timeout: a slow run on a loaded machine times out)",
    )
    args = parser.parse_args(argv)

    module = args.module.replace(os.sep, "/")
    if not (REPO / module).is_file():
        parser.error(f"{module} is not a file of the repository")
    tests = args.tests or tests_for(module)
    if not tests:
        parser.error(f"no tests/{Path(module).parent}/test_{Path(module).stem}*.py for {module}; give --tests")
    name = module.replace("/", ".").removesuffix(".py") + (".only-" + "-".join(args.only) if args.only else "")
    home = REPO / ".mutation" / name
    session = home / "session.sqlite"
    if args.report:
        if not session.is_file():
            parser.error(f"no session at {session}: run without --report first")
        print(report(session, module))
        return 0

    if args.confirm:
        if not session.is_file():
            parser.error(f"no session at {session}: run without --confirm first")
        return confirm(module, tests, home, session, args.confirm)

    home.mkdir(parents=True, exist_ok=True)
    lock = home / "lock"
    if lock.exists() and _alive(int(lock.read_text() or 0)):
        raise SystemExit(f"another run on {module} is going on (pid {lock.read_text()})")
    lock.write_text(str(os.getpid()))
    try:
        return run(args, module, tests, home, session)
    finally:
        lock.unlink(missing_ok=True)


def run(args: argparse.Namespace, module: str, tests: list[str], home: Path, session: Path) -> int:
    work = scratch_copy(home / "work")
    env = dict(os.environ, PYTHONPATH=str(work), CI="1")  # CI: Hypothesis examples are reproducible
    check_shadowing(work, module, env)
    with contextlib.ExitStack() as stack:
        server = None if args.no_fork else stack.enter_context(fork_server(home, work, env))
        return run_session(args, module, pytest_command(tests, server), work, env, home, session)


def run_session(
    args: argparse.Namespace, module: str, command: str, work: Path, env: dict, home: Path, session: Path
) -> int:
    baseline = baseline_seconds(work, command, env)
    timeout = args.timeout or max(30.0, 4.0 * baseline)
    config = home / "config.toml"
    write_config(config, module, command, timeout, module in FLOAT_MODULES)
    digest = hashlib.sha256((REPO / module).read_bytes()).hexdigest()
    stamp = home / "module.sha256"
    if session.is_file() and not args.fresh and (not stamp.is_file() or stamp.read_text() != digest):
        print(f"{module} changed since the last session: starting a new one")
        args.fresh = True
    if args.fresh or not session.is_file():
        session.unlink(missing_ok=True)
        stamp.write_text(digest)
        cosmic(["init", str(config), str(session)], work, env)
        cosmic_filter("cr-filter-operators", [str(session), str(config)], work, env)
        skip_mutants(session, annotation_spans(REPO / module), set(args.only or ()))
    if args.whole:
        forget(session, f"output = '{OUTSIDE_SAMPLE}'")
    if args.sample is not None:
        keep_sample(session, args.sample)
    if args.rerun_survivors:
        forget(session, "test_outcome = 'SURVIVED'")
    if args.rerun_timeouts:
        forget(session, "output = 'timeout'")
    print(f"mutating {module} in {work} ({pending(session)} mutants to run, {timeout:.0f} s timeout each)")
    print(f"tests: {command}", flush=True)
    cosmic(["exec", str(config), str(session)], work, env)
    text = report(session, module)
    (home / "report.md").write_text(text + "\n")
    print(text)
    return 0


def confirm(module: str, tests: list[str], home: Path, session: Path, count: int) -> int:
    """Killed mutants run again, each applied to a scratch copy of its own and tested with plain
    pytest: a fork server's verdict that a plain run does not share would be a false kill."""
    import random

    from cosmic_ray.mutating import use_mutation
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    with use_db(str(session), WorkDB.Mode.open) as db:
        killed = [
            item.mutations[0]
            for item, result in db.completed_work_items
            if result.test_outcome == TestOutcome.KILLED and result.output != "timeout"
        ]
    work = scratch_copy(home / "confirm")
    env = dict(os.environ, PYTHONPATH=str(work), CI="1")
    check_shadowing(work, module, env)
    command = shlex.split(pytest_command(tests, None))
    disagree = 0
    for mutation in random.Random(0).sample(killed, min(count, len(killed))):
        operator = get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
        with use_mutation(work / module, operator, mutation.occurrence):
            done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        verdict = "killed" if done.returncode != 0 else "SURVIVED: the fork server's kill is not confirmed"
        disagree += done.returncode == 0
        print(f"line {mutation.start_pos[0]} {mutation.operator_name} #{mutation.occurrence}: {verdict}", flush=True)
    print(f"{min(count, len(killed)) - disagree} of {min(count, len(killed))} kills confirmed by plain pytest runs")
    return 1 if disagree else 0


def _alive(pid: int) -> bool:
    """Whether `pid` is a running mutate.py (a stale lock's pid may be gone, or reused by another program)."""
    try:
        return b"mutate.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- the scratch copy ----------------------------------------------------------------------------


def scratch_copy(work: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored) copied to `work`, with an `ffclip`
    package whose subpackages are that copy's folders."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    if work.exists():
        shutil.rmtree(work)
    for raw in filter(None, files):
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (work / "ffclip").mkdir()
    for package, folder in PACKAGES.items():
        (work / "ffclip" / package).symlink_to(Path("..") / folder, target_is_directory=True)
    return work


def check_shadowing(work: Path, module: str, env: dict) -> None:
    """The tests must import the copy's module (the one cosmic-ray mutates), not the checkout's."""
    top, _, rest = module.removesuffix(".py").partition("/")
    dotted = "ffclip." + top + "." + rest.replace("/", ".")
    probe = f"import {dotted} as m, os; print(os.path.realpath(m.__file__))"
    found = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True)
    expected = os.path.realpath(work / module)
    if found.stdout.strip() != expected:
        raise SystemExit(f"the scratch copy does not shadow the install: {dotted} is {found.stdout or found.stderr}")


def pytest_command(tests: list[str], server: Path | None) -> str:
    """One pytest command; an entry may carry options (`tests/engine/test_conformance.py -k mapper`) for its file
    only when it is the last one (pytest options apply to the whole run). With a fork server, the
    same arguments go to it (tools/forktest.py)."""
    options = "-x -q -p no:cacheprovider " + " ".join(tests)
    if server is None:
        return f"{sys.executable} -m pytest " + options
    return f"{sys.executable} {REPO / 'tools' / 'forktest.py'} run {server} -- " + options


@contextlib.contextmanager
def fork_server(home: Path, work: Path, env: dict) -> Iterator[Path]:
    """tools/forktest.py serving from the scratch copy: torch & co imported once, a fork per mutant."""
    socket_path = home / "forktest.sock"
    command = [sys.executable, str(REPO / "tools" / "forktest.py"), "serve", str(socket_path)]
    server = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise SystemExit("the fork server did not start (run with --no-fork to do without it)")
        yield socket_path
    finally:
        server.kill()
        server.wait()
        socket_path.unlink(missing_ok=True)


def baseline_seconds(work: Path, command: str, env: dict) -> float:
    import time

    start = time.monotonic()
    done = subprocess.run(shlex.split(command), cwd=work, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the tests fail without any mutation:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return time.monotonic() - start


# --- cosmic-ray ----------------------------------------------------------------------------------


def write_config(path: Path, module: str, command: str, timeout: float, floats: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    excluded = FLOAT_EXCLUDED if floats else []
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(excluded)}\n"
    )


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def cosmic(args: list[str], work: Path, env: dict) -> None:
    subprocess.run([_tool("cosmic-ray"), *args], cwd=work, env=env, check=True)


def cosmic_filter(tool: str, args: list[str], work: Path, env: dict) -> None:
    subprocess.run([_tool(tool), *args], cwd=work, env=env, check=True)


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every type annotation: with `from __future__ import annotations` they
    are never evaluated, so a mutant there (`str | None` → `str % None`) is equivalent by construction."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in annotations]
    return spans


def skip_mutants(session: Path, annotations: list, functions: set[str]) -> None:
    """Mark as skipped the mutants inside annotations, and those outside `functions` when given
    (cosmic-ray records each mutant's enclosing definition)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    def why(mutation) -> str | None:
        start = tuple(mutation.start_pos)
        if any(a <= start < b for a, b in annotations):
            return "inside a type annotation"
        if functions and mutation.definition_name not in functions:
            return "outside --only"
        return None

    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            reason = why(item.mutations[0])
            if reason is not None:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason))


OUTSIDE_SAMPLE = "outside the sample"


def keep_sample(session: Path, count: int) -> None:
    """Skip all but a random `count` of the pending mutants (seeded: the same sample every time).
    cosmic-ray runs its work in an arbitrary order, so the mutants already run are a random sample
    too, and the union stays one."""
    import random

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        pending_ids = sorted(item.job_id for item in db.pending_work_items)
        keep = set(random.Random(0).sample(pending_ids, min(count, len(pending_ids))))
        for job_id in pending_ids:
            if job_id not in keep:
                db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=OUTSIDE_SAMPLE))


def forget(session: Path, where: str) -> None:
    """Drop some results (survivors, timeouts) so that `exec` runs those mutants again (cosmic-ray
    stores enum names; a timeout is a KILLED result whose output is "timeout")."""
    import sqlite3

    with sqlite3.connect(session) as db:
        db.execute(f"DELETE FROM work_results WHERE {where}")


def pending(session: Path) -> int:
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(str(session), WorkDB.Mode.open) as db:
        return sum(1 for _ in db.pending_work_items)


# --- the report ----------------------------------------------------------------------------------


def report(session: Path, module: str) -> str:
    """Killed / survived counts and every survivor with its line and diff, as Markdown."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    outcomes: Counter[str] = Counter()
    survivors = []
    timeouts = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        outcomes["pending"] = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            mutation = item.mutations[0]
            if result.output == OUTSIDE_SAMPLE:
                outcomes["unsampled"] += 1
            elif result.worker_outcome in (WorkerOutcome.SKIPPED, WorkerOutcome.NO_TEST):
                outcomes[str(result.worker_outcome.value)] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                outcomes["survived"] += 1
                survivors.append((mutation.start_pos[0], mutation.definition_name, mutation.operator_name, result.diff))
            elif result.test_outcome == TestOutcome.KILLED:
                outcomes["killed"] += 1
                if result.output == "timeout":
                    outcomes["timeout"] += 1
                    timeouts.append(
                        (mutation.start_pos[0], mutation.definition_name, mutation.operator_name, result.diff)
                    )
            else:  # the worker itself failed (cosmic-ray's "incompetent"): no verdict on the tests
                outcomes["error"] += 1
    ran = outcomes["killed"] + outcomes["survived"]
    score = 100.0 * outcomes["killed"] / ran if ran else 0.0
    lines = [
        f"### {module}",
        "",
        f"{ran} mutants run: {outcomes['killed']} killed, {outcomes['survived']} survived: "
        f"**{score:.1f} % killed** (of the killed, {outcomes['timeout']} by a timeout). "
        f"Skipped by filters: {outcomes['skipped']}; "
        f"no mutation possible: {outcomes['no-test']}; worker errors: {outcomes['error']}; "
        f"pending: {outcomes['pending']}."
        + (
            f" Outside a random sample (`--sample`; the score estimates the whole): {outcomes['unsampled']}."
            if outcomes["unsampled"]
            else ""
        ),
        "",
    ]
    lines += [_describe(*survivor) for survivor in sorted(survivors, key=lambda s: (s[0], s[2]))]
    if timeouts:
        lines += ["", "Killed by a timeout (a hang, or a slow run on a loaded machine: `--rerun-timeouts`):", ""]
        lines += [_describe(*timeout) for timeout in sorted(timeouts, key=lambda s: (s[0], s[2]))]
    return "\n".join(lines)


def _describe(line: int, definition: str, operator: str, diff: str | None) -> str:
    changed = [d[1:].strip() for d in (diff or "").splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    return f"- line {line} (`{definition}`), {operator.split('/')[-1]}: `{' → '.join(changed)}`"


if __name__ == "__main__":
    sys.exit(main())
