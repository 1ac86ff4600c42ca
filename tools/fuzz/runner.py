"""Running mutants through a target and judging what happened.

Each mutant ends one way:
- `ok`: the target accepted it (a flipped bit in a tensor's data is still a loadable file);
- a refusal label (`damaged`, `unsafe`, `bad_image`, ...): the target raised the error it promises;
- `escaped`: any other exception, a bug (recorded with the mutant's index, to reproduce it);
- `executed`: the marker file appeared, i.e. code from the mutant ran (never acceptable).

Memory: before each mutant the process's peak resident size is reset (Linux: /proc/self/clear_refs),
so `VmHWM - VmRSS before` is what that one mutant cost at its worst moment. Resident size misses a
large zero-filled buffer whose pages are never touched (a bytearray of a size the file claims, read
into only up to where the file ends), so targets with `trace_memory` are also measured with
tracemalloc (every Python-level buffer and numpy array at its full size): the peak is the larger.
Both are the whole process's, so a mutant over its budget is run and measured once more and the
smaller peak counts (its own cost is there both times; another thread's allocations or releases
of memory, once).
"""

from __future__ import annotations

import contextlib
import gc
import random
import traceback
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol


class Target(Protocol):
    name: str
    description: str

    def setup(self, workdir: Path, marker: Path) -> None:
        """Build the seed files (once per process)."""

    def mutant(self, rng: random.Random) -> bytes:
        """One mutant of a seed."""

    def run(self, data: bytes, path: Path) -> str:
        """Feed the mutant (also written at `path`) to the code under test: a label for the
        outcome ('ok' or a refusal); any exception that is not a promised refusal escapes."""

    def sound(self) -> bytes:
        """A sound input, which the target must accept."""

    def budget(self, data: bytes) -> int | None:
        """The most memory the mutant may cost (bytes), or None when no bound is claimed."""


# --------------------------------------------------------------------------- memory


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field_name} in /proc/self/status")


def can_measure_memory() -> bool:
    try:
        reset_peak()
        _status_kb("VmHWM")
    except OSError:
        return False
    return True


def reset_peak() -> None:
    """Make VmHWM start again from the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_bytes() -> int:
    return _status_kb("VmHWM") * 1024


@contextlib.contextmanager
def address_space_limit(extra: int):
    """Cap this process's address space at its current size + `extra` bytes: a size read from a
    mutant and believed would fail at once with MemoryError (an escape) instead of swapping the
    machine to a halt. Restored afterwards."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_AS)
    current = _status_kb("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


# --------------------------------------------------------------------------- results

LARGE = 64 << 10  # mutants from this size on have their own peak/size ratio in the report


@dataclass
class Escape:
    index: int
    error: str
    where: str


@dataclass
class Report:
    target: str
    seed: int
    start: int
    count: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    escapes: list[Escape] = field(default_factory=list)
    executed: list[int] = field(default_factory=list)
    over_budget: list[tuple[int, int, int]] = field(default_factory=list)  # (index, peak, budget)
    peak: int = 0  # the largest peak of one mutant, bytes
    peak_index: int = -1
    peak_ratio: float = 0.0  # the largest peak / mutant size
    peak_ratio_index: int = -1
    peak_ratio_size: int = 0  # that mutant's size
    # the same among mutants of at least LARGE bytes, where a reader's fixed bookkeeping (a zip
    # directory's objects, the pickle machine, the error message: some 10-30 KB) no longer counts
    large_ratio: float = 0.0
    large_ratio_index: int = -1
    measured: bool = False
    bound: str = ""  # what the target's memory budget is, in words

    @property
    def clean(self) -> bool:
        return not self.escapes and not self.executed and not self.over_budget

    def add(self, other: Report) -> None:
        self.count += other.count
        self.outcomes.update(other.outcomes)
        self.escapes += other.escapes
        self.executed += other.executed
        self.over_budget += other.over_budget
        self.measured = self.measured or other.measured
        self.bound = self.bound or other.bound
        if other.peak > self.peak:
            self.peak, self.peak_index = other.peak, other.peak_index
        if other.peak_ratio > self.peak_ratio:
            self.peak_ratio, self.peak_ratio_index = other.peak_ratio, other.peak_ratio_index
            self.peak_ratio_size = other.peak_ratio_size
        if other.large_ratio > self.large_ratio:
            self.large_ratio, self.large_ratio_index = other.large_ratio, other.large_ratio_index

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "seed": self.seed,
            "start": self.start,
            "count": self.count,
            "outcomes": dict(sorted(self.outcomes.items())),
            "escapes": [vars(e) for e in self.escapes],
            "executed": self.executed,
            "over_budget": self.over_budget,
            "peak": self.peak,
            "peak_index": self.peak_index,
            "peak_ratio": round(self.peak_ratio, 3),
            "peak_ratio_index": self.peak_ratio_index,
            "peak_ratio_size": self.peak_ratio_size,
            "large_ratio": round(self.large_ratio, 3),
            "large_ratio_index": self.large_ratio_index,
            "measured": self.measured,
            "bound": self.bound,
        }

    @classmethod
    def from_json(cls, doc: dict) -> Report:
        report = cls(doc["target"], doc["seed"], doc["start"], doc["count"], Counter(doc["outcomes"]))
        report.escapes = [Escape(**e) for e in doc["escapes"]]
        report.executed = list(doc["executed"])
        report.over_budget = [tuple(x) for x in doc["over_budget"]]  # type: ignore[misc]
        report.peak, report.peak_index = doc["peak"], doc["peak_index"]
        report.peak_ratio, report.peak_ratio_index = doc["peak_ratio"], doc["peak_ratio_index"]
        report.peak_ratio_size = doc.get("peak_ratio_size", 0)
        report.large_ratio, report.large_ratio_index = doc.get("large_ratio", 0.0), doc.get("large_ratio_index", -1)
        report.measured, report.bound = doc["measured"], doc.get("bound", "")
        return report


def mutant_rng(seed: int, target: str, index: int) -> random.Random:
    """The generator of one mutant: any mutant of a run can be made again from its index."""
    return random.Random(f"{seed}/{target}/{index}")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))


@dataclass
class Outcome:
    label: str  # 'escaped: ...' carries the exception
    peak: int  # bytes
    size: int  # the mutant's
    budget: int | None


def run_one(target: Target, index: int, seed: int, workdir: Path, measure: bool) -> Outcome:
    """What one mutant did."""
    data = target.mutant(mutant_rng(seed, target.name, index))
    path = workdir / "mutant"
    path.write_bytes(data)
    traced_before = 0
    if measure:
        gc.collect()
        reset_peak()
        before = rss_bytes()
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
            traced_before = tracemalloc.get_traced_memory()[0]
    try:
        label = target.run(data, path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything that is not a promised refusal counts
        label = f"escaped: {type(exc).__name__}: {str(exc)[:300]} @ {_where(exc)}"
    peak = max(0, peak_bytes() - before) if measure else 0
    if measure and tracemalloc.is_tracing():
        peak = max(peak, tracemalloc.get_traced_memory()[1] - traced_before)
    return Outcome(label, peak, len(data), target.budget(data))


def warm_up(target: Target, workdir: Path) -> None:
    """Run the target on its sound seed once, so that one-time costs (lazy imports, caches) are
    not counted against the first mutant; and check that it takes a sound file."""
    sound = target.sound()
    path = workdir / "sound"
    path.write_bytes(sound)
    label = target.run(sound, path)
    if label != getattr(target, "sound_label", "ok"):
        raise RuntimeError(f"{target.name} refuses its own sound seed: {label}")


def run(
    target: Target,
    count: int,
    seed: int = 0,
    start: int = 0,
    workdir: Path | None = None,
    measure: bool | None = None,
    on_mutant=None,
) -> Report:
    """Mutants start..start+count-1 of `target`, in this process."""
    import tempfile

    own = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="ffclip-fuzz-") if own else None
    workdir = Path(tmp.name) if tmp else Path(workdir)  # type: ignore[arg-type]
    marker = workdir / "CODE-RAN"
    measure = can_measure_memory() if measure is None else measure
    started_tracing = False
    report = Report(target.name, seed, start, measured=measure, bound=getattr(target, "memory_bound", ""))
    try:
        target.setup(workdir, marker)
        if measure and getattr(target, "trace_memory", False) and not tracemalloc.is_tracing():
            tracemalloc.start()
            started_tracing = True
        warm_up(target, workdir)
        gc.freeze()  # torch's heap is large: later collections look at what the mutants make only
        for index in range(start, start + count):
            if on_mutant is not None:
                on_mutant(index, report)
            outcome = run_one(target, index, seed, workdir, measure)
            if _over_budget(outcome):
                outcome = _measured_again(target, index, seed, workdir, outcome)
            label = outcome.label
            report.count += 1
            if marker.exists():
                report.executed.append(index)
                marker.unlink()
            if label.startswith("escaped: "):
                text, _, where = label[len("escaped: ") :].partition(" @ ")
                report.escapes.append(Escape(index, text, where))
                report.outcomes["escaped"] += 1
            else:
                report.outcomes[label] += 1
            if measure:
                _note_memory(report, index, outcome)
    finally:
        if started_tracing:
            tracemalloc.stop()
        gc.unfreeze()
        close = getattr(target, "close", None)
        if close is not None:
            close()
        if tmp is not None:
            tmp.cleanup()
    return report


def _over_budget(outcome: Outcome) -> bool:
    return outcome.budget is not None and outcome.peak > outcome.budget


def _measured_again(target: Target, index: int, seed: int, workdir: Path, first: Outcome) -> Outcome:
    """A mutant over its budget runs once more, and the smaller peak counts: what another thread does
    to the resident size lands on whichever mutant is running, once, while the mutant's own cost is
    there on every run. (In CI the previous test's engine worker gave 235 MB back to the OS between
    the peak's reset and the reading of the size before: a 235 MB "peak" for a JPEG of a few KB.)"""
    again = run_one(target, index, seed, workdir, measure=True)
    return replace(first, peak=min(first.peak, again.peak))


def _note_memory(report: Report, index: int, outcome: Outcome) -> None:
    if outcome.peak > report.peak:
        report.peak, report.peak_index = outcome.peak, index
    ratio = outcome.peak / max(outcome.size, 1)
    if ratio > report.peak_ratio:
        report.peak_ratio, report.peak_ratio_index, report.peak_ratio_size = ratio, index, outcome.size
    if outcome.size >= LARGE and ratio > report.large_ratio:
        report.large_ratio, report.large_ratio_index = ratio, index
    if _over_budget(outcome):
        report.over_budget.append((index, outcome.peak, outcome.budget))
