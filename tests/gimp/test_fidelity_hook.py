"""The plug-in's side of `fidelity` (issue 29), for the dialog's "Keep the person (slower)" checkbox:
the procedure's arguments and the live editor carry it into every EditParams they build."""

from __future__ import annotations

import pytest

from ffclip.gimp.edit import PluginError, ProcedureArgs
from ffclip.plugin.protocol import EditParams
from tests.gimp.test_live import editor_with


def test_procedure_arguments_carry_the_fidelity() -> None:
    assert ProcedureArgs("smiling").params().fidelity == "standard"
    params = ProcedureArgs("smiling", fidelity="high").params()
    assert params.fidelity == "high" and params.to_message("j", None)["fidelity"] == "high"
    assert ProcedureArgs.of(params).fidelity == "high"
    with pytest.raises(PluginError, match="Fidelity must be one of standard, high"):
        ProcedureArgs("smiling", fidelity="ultra").params()


def test_the_live_editor_sends_the_chosen_fidelity() -> None:
    editor, *_ = editor_with()
    editor.input_changed([("smiling", 1.0)])
    assert editor.params(preview=True).fidelity == "standard"
    editor.input_changed([("smiling", 1.0)], fidelity="high")
    params = editor.params(preview=True)
    assert isinstance(params, EditParams) and params.fidelity == "high"
    editor.input_changed([("smiling", 0.5)])  # other changes keep it
    assert editor.params(preview=False).fidelity == "high"
