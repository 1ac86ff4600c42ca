"""batch-edit --fidelity (issue 29): the plug-in procedure's `fidelity` argument, sent only when high."""

from __future__ import annotations

import argparse

from ffclip.app import batch_edit


def test_batch_edit_sends_the_fidelity_only_when_high() -> None:
    parser = argparse.ArgumentParser()
    batch_edit.add_arguments(parser)
    plain = parser.parse_args(["photos", "smiling", "-o", "out"])
    assert "fidelity" not in batch_edit.procedure_args(plain)  # an older plug-in gets what it always got
    high = parser.parse_args(["photos", "smiling", "-o", "out", "--fidelity", "high"])
    assert batch_edit.procedure_args(high)["fidelity"] == "high"
