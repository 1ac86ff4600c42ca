"""`python -m tools.fuzz`: long fuzz runs, one child process per target.

A child runs its target's mutants in order under an address-space limit (a size believed from a
mutant fails there with MemoryError, an escape, instead of swapping the machine) and writes the
index of each mutant before running it; if the child dies (a crash in a C library), the parent
records that mutant as a crash and starts a new child after it. Exit status 1 when any mutant
escaped, ran code, crashed or went over its memory budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.fuzz import runner  # noqa: E402


def _targets() -> dict:
    from tools.fuzz.targets import all_targets

    return all_targets()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="default: all (see --list)")
    parser.add_argument("--count", type=int, default=1000, help="mutants per target (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: mutant i of a seed is always the same")
    parser.add_argument("--start", type=int, default=0, help="index of the first mutant")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--save", type=int, metavar="INDEX", help="write mutant INDEX of one TARGET to -o, run nothing")
    parser.add_argument("-o", "--output", type=Path, help="where --save writes")
    parser.add_argument(
        "--address-space", type=float, default=3.0, metavar="GB", help="memory a child may add (default 3 GB)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    targets = _targets()
    if args.list:
        for name, target in targets.items():
            print(f"{name:18} {target.description}")
        return 0
    unknown = [t for t in args.targets if t not in targets]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    names = args.targets or list(targets)
    if args.save is not None:
        return _save(targets, names, args)
    if args.worker:
        return _worker(targets[names[0]], args)
    return _run_all(names, args)


def _save(targets: dict, names: list[str], args: argparse.Namespace) -> int:
    if len(names) != 1 or args.output is None:
        print("--save takes one TARGET and -o FILE", file=sys.stderr)
        return 2
    target = targets[names[0]]
    with tempfile.TemporaryDirectory() as tmp:
        target.setup(Path(tmp), Path(tmp) / "CODE-RAN")
        data = target.mutant(runner.mutant_rng(args.seed, target.name, args.save))
        getattr(target, "close", lambda: None)()
    args.output.write_bytes(data)
    print(f"mutant {args.save} of {target.name} (seed {args.seed}): {len(data)} bytes -> {args.output}")
    return 0


def _worker(target, args: argparse.Namespace) -> int:
    """In the child: the mutants, the progress file, the report as JSON on stdout's last line."""
    import torch

    torch.set_num_threads(1)

    def note(index: int, report: runner.Report) -> None:
        # what a parent needs if this process dies in the next mutant: which, and what came before
        args.progress.write_text(json.dumps({"next": index, "report": report.to_json()}))

    with runner.address_space_limit(int(args.address_space * (1 << 30))):
        report = runner.run(target, args.count, args.seed, args.start, on_mutant=note)
    print(json.dumps(report.to_json()))
    return 0


def _run_target(name: str, args: argparse.Namespace) -> runner.Report:
    """The target's mutants in child processes, restarted after a crash."""
    total = runner.Report(name, args.seed, args.start)
    start, end = args.start, args.start + args.count
    with tempfile.TemporaryDirectory(prefix="ffclip-fuzz-") as tmp:
        progress = Path(tmp) / "progress"
        while start < end:
            command = [sys.executable, "-m", "tools.fuzz", name, "--worker", "--progress", str(progress)]
            command += ["--count", str(end - start), "--seed", str(args.seed), "--start", str(start)]
            command += ["--address-space", str(args.address_space)]
            progress.write_text(json.dumps({"next": start, "report": None}))
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_child_env())
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines:
                total.add(runner.Report.from_json(json.loads(lines[-1])))
                break
            state = json.loads(progress.read_text())
            if state["report"] is not None:
                total.add(runner.Report.from_json(state["report"]))
            crashed = state["next"]
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            total.escapes.append(runner.Escape(crashed, f"the process died ({done.returncode}): {tail[0][:200]}", ""))
            total.outcomes["crashed"] += 1
            total.count += 1
            start = crashed + 1
    return total


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def _print(report: runner.Report, seconds: float) -> None:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items(), key=lambda kv: -kv[1]))
    print(f"{report.target}: {report.count} mutants in {seconds:.0f} s (seed {report.seed}): {outcomes}")
    print(f"  escaped {len(report.escapes)}, code executed {len(report.executed)}", end="")
    if report.measured:
        print(f", peak memory of a mutant {_mb(report.peak)} (#{report.peak_index})", end="")
        if report.bound:
            ratio = (
                f"at most {report.peak_ratio:.2f}x its size (#{report.peak_ratio_index}, "
                f"{report.peak_ratio_size} bytes), {report.large_ratio:.2f}x among mutants of "
                f"{runner.LARGE >> 10} KiB or more (#{report.large_ratio_index}); "
            )
            ratio = "" if "max_pixels" in report.bound else ratio  # an image's bound is its pixels
            print(f", {ratio}over budget ({report.bound}): {len(report.over_budget)}")
        else:
            print()
    else:
        print()
    for escape in report.escapes[:10]:
        print(f"  ESCAPED #{escape.index}: {escape.error} {escape.where}")
    for index in report.executed[:10]:
        print(f"  CODE RAN #{index}")
    for index, peak, budget in report.over_budget[:10]:
        print(f"  OVER BUDGET #{index}: {_mb(peak)} > {_mb(budget)}")


def _run_all(names: list[str], args: argparse.Namespace) -> int:
    reports = []
    for name in names:
        started = time.monotonic()
        report = _run_target(name, args)
        _print(report, time.monotonic() - started)
        sys.stdout.flush()
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=1) + "\n")
    return 0 if all(r.clean for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
