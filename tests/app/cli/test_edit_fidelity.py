"""`ffclip-engine edit --fidelity high` (issue 29) on the tiny profile's seeded HyperStyle."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffclip.app.cli import main


def test_edit_with_high_fidelity_writes_the_photo(
    photos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "high.png"
    args = ["edit", str(photos_dir / "obama.jpg"), "smiling", "-o", str(out), "--profile", "tiny"]
    code = main([*args, "--faces", "largest", "--fidelity", "high", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and "; fidelity high" in captured.out and "invert" in captured.out


def test_an_unknown_fidelity_is_refused_by_the_parser(photos_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["edit", str(photos_dir / "obama.jpg"), "smiling", "-o", str(tmp_path / "x.png"), "--fidelity", "ultra"])
    assert info.value.code == 2
