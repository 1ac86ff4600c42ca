"""Strict comparison of a state_dict with the {key: shape} a model expects, as a readable report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import CheckpointError

Shape = tuple[int, ...]
MAX_LISTED = 12  # per category; a wrong file can differ in hundreds of keys


def shape_of(value: Any) -> Shape | None:
    """A tensor's shape; a tuple of ints stands for itself (shapes read from a file header)."""
    if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
        return tuple(value)
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def shapes(state_dict: Mapping[str, Any]) -> dict[str, Shape | None]:
    return {k: shape_of(v) for k, v in state_dict.items()}


def _fmt(shape: Shape | None) -> str:
    return "(not a tensor)" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    noun = "key" if len(lines) == 1 else "keys"
    out = [f"  {len(lines)} {title} {noun}:"]
    out += [f"    {line}" for line in lines[:MAX_LISTED]]
    if len(lines) > MAX_LISTED:
        out.append(f"    ... and {len(lines) - MAX_LISTED} more")
    return out


def _common_prefix_hint(missing: list[str], unexpected: list[str]) -> str | None:
    """Spot the usual cause of a wholesale mismatch: keys that carry an extra or lack a prefix."""
    if not missing or not unexpected:
        return None
    probe = unexpected[0]
    for key in missing:
        if probe.endswith("." + key):
            prefix = probe[: -len(key)]
            if all(u.startswith(prefix) for u in unexpected):
                return f"the file's keys carry an extra prefix {prefix!r}"
        if key.endswith("." + probe):
            prefix = key[: -len(probe)]
            if all(m.startswith(prefix) for m in missing):
                return f"the file's keys lack the prefix {prefix!r}"
    return None


def compare(
    state_dict: Mapping[str, Any], expected: Mapping[str, Shape]
) -> tuple[list[str], list[str], list[tuple[str, Shape | None, Shape]]]:
    """(missing, unexpected, [(key, found shape, expected shape)]) in the expected / file order."""
    found = shapes(state_dict)
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [(k, found[k], tuple(s)) for k, s in expected.items() if k in found and found[k] != tuple(s)]
    return missing, unexpected, misshaped


def mismatch_report(state_dict: Mapping[str, Any], expected: Mapping[str, Shape], what: str) -> str | None:
    """None when the keys and shapes match exactly, else a multi-line report."""
    missing, unexpected, misshaped = compare(state_dict, expected)
    if not (missing or unexpected or misshaped):
        return None
    lines = [
        f"{what}: the weights do not match the model ({len(state_dict)} tensors in the file, {len(expected)} expected)"
    ]
    lines += _listing("missing", [f"{k} {_fmt(tuple(expected[k]))}" for k in missing])
    lines += _listing("unexpected", [f"{k} {_fmt(shape_of(state_dict[k]))}" for k in unexpected])
    lines += _listing("mis-shaped", [f"{k}: file {_fmt(got)}, expected {_fmt(want)}" for k, got, want in misshaped])
    hint = _common_prefix_hint(missing, unexpected)
    if hint:
        lines.append(f"  hint: {hint}")
    return "\n".join(lines)


def check_state_dict(state_dict: Mapping[str, Any], expected: Mapping[str, Shape], what: str) -> None:
    """Raise CheckpointError (the message is the report) unless keys and shapes match exactly."""
    report = mismatch_report(state_dict, expected, what)
    if report:
        raise CheckpointError(report)
