"""FFCLIP Edit's live dialog: GTK widgets (through GimpUi) bound to live.LiveEditor.

Up to four attribute rows (a prompt, Enter previews at once; a labelled strength spin-scale),
presets, what to edit (faces, or the car / church in the selection), a face chooser numbered left
to right once the photo shows several faces (the numbers are drawn on the preview), a before/after
switch, the engine's state in one line (with Start when the plug-in can start it) and the job's
progress. Help (F1), Reset, Cancel, Apply. The preview is a temporary layer on the canvas
(layers.PreviewLayer) that never reaches the undo history or becomes the active layer; Apply leaves
one masked layer in one undo step (or, for a reopened edit, replaces that layer in place), Cancel
leaves the image, its history and its saved state as they were. Every decision is LiveEditor's;
this module only reads widgets, draws what it is told, and carries engine events from the
session's threads to GTK's main loop. Runs only inside GIMP.

`FFCLIP_DIALOG_SCRIPT` (a JSON file of steps) makes the dialog act out a user's session on its own
widgets — typing, sliders, buttons, screenshots — which the real-GIMP tests and the documentation
screenshots use; `FFCLIP_DIALOG_LOG` receives what it saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gdk, Gegl, Gimp, GimpUi, GLib, Gtk  # noqa: E402

from ffclip.plugin.protocol import EditParams, EditResult, ImageSpec  # noqa: E402
from ffclip.plugin.session import EngineSession, Event  # noqa: E402

from . import diagnose, live  # noqa: E402
from . import edit as gimp_edit  # noqa: E402
from . import settings as gimp_settings  # noqa: E402
from .background import PluginInstaller  # noqa: E402
from .layers import RGBA, LayerPixels, PreviewLayer, place_result, replace_result  # noqa: E402
from .recipe import Recipe, SourceRef, pixels_digest  # noqa: E402

TICK_MS = 50
DIALOG_WIDTH = 560
CONNECT_TIMEOUT_S = 2.0  # the engine's state is known within about this long of opening
HELP_PAGE = "help.html"  # next to this module in the plug-in folder
HINT = (
    "Describe the change, e.g. <i>smiling</i> or <i>grey hair</i>, and press Enter; add rows to change "
    "several things at once. The preview on the canvas follows as you type; <b>Apply</b> renders it at "
    "full resolution into a new layer."
)


@dataclass
class Opening:
    """What the dialog opens with: the procedure's last values, or a reopened edit's recipe."""

    rows: list[tuple[str, float]]
    domain: str = "face"
    faces: str | tuple[int, ...] = "all"
    output: str = "layer-mask"
    reopened: Gimp.Layer | None = None  # the FFCLIP layer being edited again, replaced by Apply
    recipe: Recipe | None = None
    fidelity: str = "standard"  # "high": HyperStyle's inversion (issue 29)


class _EnginePort:
    """live.Engine on the session, with this dialog's photo."""

    def __init__(self, session: EngineSession, pixels: LayerPixels) -> None:
        self.session, self.pixels = session, pixels
        self.spec = ImageSpec(pixels.width, pixels.height)

    def submit(self, params: EditParams) -> str:
        return self.session.submit(params, self.pixels.rgba, self.spec, self.pixels.selection)

    def cancel(self, job_id: str) -> None:
        self.session.cancel(job_id)

    def request_status(self) -> None:
        self.session.request_status()


class _Row:
    def __init__(self, dialog: LiveDialog, prompt: str, strength: float) -> None:
        self.box = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.entry = Gtk.Entry(text=prompt, hexpand=True, placeholder_text="e.g. smiling, grey hair")
        self.entry.set_completion(dialog.completion())
        self.entry.set_tooltip_text("What to change; Enter shows the preview at once")
        self.adjustment = Gtk.Adjustment(
            value=strength,
            lower=gimp_edit.STRENGTH_MIN,
            upper=gimp_edit.STRENGTH_MAX,
            step_increment=0.05,
            page_increment=0.25,
        )
        self.scale = GimpUi.SpinScale.new(self.adjustment, "Strength", 2)
        self.scale.set_size_request(200, -1)
        self.scale.set_tooltip_text("How strong the change is: 1 = as trained, 0 = none (type a number, or drag)")
        self.remove = Gtk.Button.new_from_icon_name("list-remove-symbolic", Gtk.IconSize.BUTTON)
        self.remove.set_tooltip_text("Remove this attribute")
        for widget in (self.entry, self.scale, self.remove):
            self.box.pack_start(widget, widget is self.entry, True, 0)
        self.entry.connect("changed", lambda *_: dialog.changed())
        self.entry.connect("activate", lambda *_: dialog.editor.preview_now())
        self.adjustment.connect("value-changed", lambda *_: dialog.changed())
        self.remove.connect("clicked", lambda *_: dialog.remove_row(self))

    @property
    def value(self) -> tuple[str, float]:
        return self.entry.get_text(), round(self.adjustment.get_value(), 2)


class LiveDialog:
    """live.Canvas and live.View for LiveEditor; `run()` returns the new (or replaced) layer or None."""

    def __init__(
        self,
        image: Gimp.Image,
        layer: Gimp.Layer,
        settings: dict,
        plugin_dir: str,
        opening: Opening,
        on_applied=None,
    ) -> None:
        GimpUi.init("python-fu-ffclip-edit")
        self.image, self.source = image, layer
        self.settings, self.plugin_dir, self.opening = settings, plugin_dir, opening
        self.on_applied = on_applied  # (params, output): the procedure's last values
        self.pixels = LayerPixels(image, layer)
        if gimp_edit.selection_is_full(self.pixels.selection):
            self.pixels.selection = None
        above, cover = layer, None
        if opening.reopened is not None:
            above = opening.reopened
            _, sx, sy = layer.get_offsets()
            _, rx, ry = above.get_offsets()
            cover = (rx - sx, ry - sy, above.get_width(), above.get_height())
        self.preview = PreviewLayer(self.pixels, above, cover)
        self.new_layer: Gimp.Layer | None = None
        self.url = gimp_settings.resolve_url(None, settings)
        self.session = EngineSession(
            self.url,
            lambda e: GLib.idle_add(self._event, e),
            token=settings.get("token"),
            connect_timeout=CONNECT_TIMEOUT_S,
            tls=gimp_edit.session_tls(settings),
            plain_token=bool(settings.get("insecure_plain_token")),
            verify_local=gimp_edit.must_be_ours(settings, self.url),
        )
        starter = (
            gimp_edit.EngineStarter(dict(settings, url=self.url)) if gimp_edit.can_start(settings, self.url) else None
        )
        self._completion_model = Gtk.ListStore(str)
        for prompt in live.suggestions(settings.get("recent_prompts") or [], live.training_prompts()):
            self._completion_model.append([prompt])
        self._build()
        port = _EnginePort(self.session, self.pixels)
        self.editor = live.LiveEditor(
            port,
            self,
            self,
            self.pixels.width,
            starter=starter,
            autostart=bool(settings.get("autostart")),
            url=self.url,
            start_timeout=float(settings.get("start_timeout") or live.START_TIMEOUT_S),
            installer=PluginInstaller(plugin_dir) if gimp_settings.is_local_url(self.url) else None,
        )
        self.shown = 0  # previews drawn, for the scripted runs
        self.faces_listed = False
        self._fill(opening)

    # ------------------------------------------------------------------ widgets

    def _build(self) -> None:
        title = "FFCLIP Edit (reopened)" if self.opening.reopened is not None else "FFCLIP Edit"
        self.dialog = GimpUi.Dialog(title=title, role="ffclip-edit", use_header_bar=False)
        self.dialog.add_button("_Help", Gtk.ResponseType.HELP)
        self.dialog.add_button("_Reset", RESPONSE_RESET)
        self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.apply_button = self.dialog.add_button("_Apply", Gtk.ResponseType.OK)
        # Resizable, with a width of its own: a window that is not takes its contents' natural width,
        # and a long message would make it grow; this way the lines wrap instead.
        self.dialog.set_default_size(DIALOG_WIDTH, -1)
        self.dialog.connect("response", self._response)
        self.dialog.connect("key-press-event", self._key)
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8, border_width=12)
        self.dialog.get_content_area().pack_start(box, False, False, 0)

        # wrapping labels as wide at their narrowest as at their widest: GTK sizes a window's height for
        # its labels wrapped at their narrowest, and a narrower minimum leaves empty space below them
        hint = Gtk.Label(xalign=0.0, wrap=True, max_width_chars=64, width_chars=64)
        hint.set_markup(HINT)
        box.pack_start(hint, False, False, 0)
        self.rows_box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.pack_start(self.rows_box, False, False, 0)
        self.rows: list[_Row] = []
        tools = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.add_button = Gtk.Button.new_with_mnemonic("_Add an attribute")
        self.add_button.connect("clicked", lambda *_: self.add_row("", gimp_edit.STRENGTH_DEFAULT))
        tools.pack_start(self.add_button, False, False, 0)
        tools.pack_start(Gtk.Label(label="Preset:"), False, False, 6)
        self.presets = Gtk.ComboBoxText()
        self.presets.set_tooltip_text("Rows saved under a name")
        self.presets.connect("changed", lambda *_: self._load_preset())
        tools.pack_start(self.presets, True, True, 0)
        self.save_preset_button = Gtk.Button.new_with_mnemonic("_Save\u2026")
        self.save_preset_button.set_tooltip_text("Save these rows as a preset")
        self.save_preset_button.connect("clicked", lambda *_: self._save_preset())
        tools.pack_start(self.save_preset_button, False, False, 0)
        self.delete_preset_button = Gtk.Button.new_from_icon_name("edit-delete-symbolic", Gtk.IconSize.BUTTON)
        self.delete_preset_button.set_tooltip_text("Delete the chosen preset")
        self.delete_preset_button.connect("clicked", lambda *_: self._delete_preset())
        tools.pack_start(self.delete_preset_button, False, False, 0)
        box.pack_start(tools, False, False, 0)
        self._refill_presets()

        self.domain = Gtk.ComboBoxText()
        for nick, label in gimp_edit.DOMAIN_CHOICES:
            self.domain.append(nick, label)
        self.domain.set_tooltip_text(
            "Faces are found in the layer; a car or a church is the selection (or the whole layer)"
        )
        self.domain.connect("changed", lambda *_: self._domain_changed())
        domain_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        domain_row.pack_start(Gtk.Label(label="Edit:"), False, False, 0)
        domain_row.pack_start(self.domain, True, True, 0)
        box.pack_start(domain_row, False, False, 0)

        self.faces = Gtk.ComboBoxText()
        self.faces.append("all", "All faces")
        self.faces.append("largest", "The largest face")
        self.faces.set_active_id("all")
        self.faces.set_tooltip_text("Faces are numbered from the left; the preview shows the numbers")
        self.faces.connect("changed", lambda *_: self.changed())
        self.faces_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.faces_row.pack_start(Gtk.Label(label="Faces:"), False, False, 0)
        self.faces_row.pack_start(self.faces, True, True, 0)
        box.pack_start(self.faces_row, False, False, 0)

        self.keep_person = Gtk.CheckButton.new_with_mnemonic("_Keep the person (slower)")
        self.keep_person.connect("toggled", lambda *_: self.changed())
        box.pack_start(self.keep_person, False, False, 0)

        self.before = Gtk.CheckButton.new_with_mnemonic("Show the _original (before)")
        self.before.connect("toggled", lambda b: self.editor.toggle_before(b.get_active()))
        box.pack_start(self.before, False, False, 0)
        engine_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.engine_label = Gtk.Label(label="", xalign=0.0, wrap=True, max_width_chars=46, width_chars=46, hexpand=True)
        engine_row.pack_start(self.engine_label, True, True, 0)
        self.start_button = Gtk.Button.new_with_mnemonic("_Start the engine")
        self.start_button.set_tooltip_text("Run the FFCLIP engine on this computer (its start command)")
        self.start_button.connect("clicked", lambda *_: self.editor.start())
        engine_row.pack_start(self.start_button, False, False, 0)
        box.pack_start(engine_row, False, False, 0)
        # what to do when there is no engine: set one up here, stop that, or ask the doctor why
        self.actions_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.setup_button = Gtk.Button.new_with_mnemonic("Set _up the FFCLIP engine on this computer\u2026")
        self.setup_button.set_tooltip_text(
            "Install the engine into a private Python environment in your user folder, then start it"
        )
        self.setup_button.connect("clicked", lambda *_: self._setup_clicked())
        self.cancel_setup_button = Gtk.Button.new_with_mnemonic("Stop the _set-up")
        self.cancel_setup_button.set_tooltip_text("Stop it now; setting up again goes on where it stopped")
        self.cancel_setup_button.connect("clicked", lambda *_: self.editor.cancel_setup())
        self.diagnose_button = Gtk.Button.new_with_mnemonic("_Diagnose")
        self.diagnose_button.set_tooltip_text("What is wrong, and how to fix it (ffclip-engine doctor)")
        self.diagnose_button.connect("clicked", lambda *_: self._diagnose())
        for button in (self.diagnose_button, self.cancel_setup_button, self.setup_button):
            self.actions_row.pack_end(button, False, False, 0)
        box.pack_start(self.actions_row, False, False, 0)
        self.setup_confirm: Gtk.Dialog | None = None
        self.trial: Gtk.CheckButton | None = None
        self.text_window: Gtk.Dialog | None = None
        self.text_view: Gtk.TextView | None = None
        self.progress = Gtk.ProgressBar(show_text=True, text="")
        self.progress.set_ellipsize(3)  # Pango.EllipsizeMode.END: one line, whatever it says
        box.pack_start(self.progress, False, False, 0)

    def _fill(self, opening: Opening) -> None:
        """The widgets set to what the dialog opens with (also Reset, with the defaults)."""
        for row in list(self.rows):
            self.rows_box.remove(row.box)
        self.rows = []
        for prompt, strength in opening.rows or [("", gimp_edit.STRENGTH_DEFAULT)]:
            self.add_row(prompt, strength)
        self.keep_person.set_active(opening.fidelity == "high")
        if not self.domain.set_active_id(opening.domain):
            self.domain.set_active_id("face")
        if isinstance(opening.faces, tuple):  # a reopened edit of one face: that face again
            key = f"face:{opening.faces[0]}"
            self.faces.append(key, "The face edited before")
            self.faces.set_active_id(key)
            self.faces_listed = True
        else:
            self.faces.set_active_id(opening.faces if opening.faces in ("all", "largest") else "all")
        self.dialog.show_all()
        self.start_button.hide()
        self.set_actions(*(self.editor.offered or (False, False, False)))  # show_all showed them all
        self._fit()
        if not self.faces_listed:
            self.faces_row.hide()  # until the photo shows several faces
        self.changed()

    def completion(self) -> Gtk.EntryCompletion:
        # inline only: a completion pop-up grabs the pointer and swallows the next click elsewhere
        completion = Gtk.EntryCompletion(model=self._completion_model, minimum_key_length=2)
        completion.set_text_column(0)
        completion.set_popup_completion(False)
        completion.set_inline_completion(True)
        return completion

    def add_row(self, prompt: str, strength: float) -> None:
        if len(self.rows) >= live.ROWS_MAX:
            return
        row = _Row(self, prompt, strength)
        self.rows.append(row)
        self.rows_box.pack_start(row.box, False, False, 0)
        row.box.show_all()
        row.entry.grab_focus()
        self._rows_changed()

    def remove_row(self, row: _Row) -> None:
        if len(self.rows) > 1:
            self.rows.remove(row)
            self.rows_box.remove(row.box)
            self._rows_changed()

    def _rows_changed(self) -> None:
        self.add_button.set_sensitive(len(self.rows) < live.ROWS_MAX)
        for row in self.rows:
            row.remove.set_sensitive(len(self.rows) > 1)
        self.changed()

    def changed(self) -> None:
        if not hasattr(self, "editor"):
            return  # still building
        choice = self.faces.get_active_id() or "all"
        faces: Any = (int(choice.split(":")[1]),) if choice.startswith("face:") else choice
        domain = self.domain.get_active_id() or "face"
        fidelity = "high" if self.keep_person.get_active() and self.keep_person.get_sensitive() else "standard"
        self.editor.input_changed([row.value for row in self.rows], faces, domain, fidelity)

    def _domain_changed(self) -> None:
        if (self.domain.get_active_id() or "face") != "face":
            self.faces.set_active_id("all")
            self.faces_row.hide()
        elif self.faces_listed:  # back to faces: the chooser the photo's faces filled
            self.faces_row.show_all()
        self.changed()

    # -- presets

    def _refill_presets(self) -> None:
        self.presets.remove_all()
        for name in live.preset_names(self.settings):
            self.presets.append(name, name)
        has = bool(live.preset_names(self.settings))
        self.presets.set_sensitive(has)
        self.delete_preset_button.set_sensitive(has)

    def _load_preset(self) -> None:
        name = self.presets.get_active_id()
        rows = live.preset_rows(self.settings, name) if name else []
        if rows:
            self._fill(Opening(rows, self.domain.get_active_id() or "face"))

    def _save_preset(self, name: str | None = None) -> None:
        if name is None:
            name = _ask_name(self.dialog, self.presets.get_active_id() or "")
        if name and live.save_preset(self.settings, name, [row.value for row in self.rows]):
            self._save_settings()
            self._refill_presets()
            self.presets.set_active_id(" ".join(name.split()))

    def _delete_preset(self) -> None:
        name = self.presets.get_active_id()
        if name:
            live.delete_preset(self.settings, name)
            self._save_settings()
            self._refill_presets()

    # -- responses

    def _response(self, _dialog, response: int) -> None:
        if response == Gtk.ResponseType.OK:
            self.editor.apply()
        elif response == Gtk.ResponseType.HELP:
            self.show_help()
        elif response == RESPONSE_RESET:
            self.before.set_active(False)
            self.presets.set_active(-1)  # no preset chosen: choosing one again loads it
            self._fill(Opening([("", gimp_edit.STRENGTH_DEFAULT)]))
        else:  # Cancel, Escape, the window's close button
            self.editor.cancel()

    def _key(self, _widget, event) -> bool:
        if event.keyval == Gdk.KEY_F1:
            self.show_help()
            return True
        return False

    def show_help(self) -> None:
        page = Path(__file__).resolve().parent / HELP_PAGE
        with contextlib.suppress(GLib.Error):
            Gtk.show_uri_on_window(self.dialog, page.as_uri(), Gdk.CURRENT_TIME)

    def place_beside_the_image(self) -> None:
        """At the right edge of the screen, not centred over the photo (and its faces)."""
        display = Gdk.Display.get_default()
        monitor = display.get_primary_monitor() or display.get_monitor(0)
        if monitor is None:
            return
        area = monitor.get_workarea()
        self.dialog.move(area.x + area.width - DIALOG_WIDTH - 24, area.y + 48)

    # ------------------------------------------------------------------ live.View

    def set_status(self, text: str, fraction: float | None = live.IDLE) -> None:
        self.progress.set_text(text)
        if fraction is None:
            self.progress.pulse()
        else:
            self.progress.set_fraction(fraction)

    def set_engine(self, text: str, ready: bool, can_start: bool = False) -> None:
        self.engine_label.set_text(text)
        self.start_button.set_visible(can_start)
        self._fit()

    def offer_fidelity(self, high: bool, why_not: str) -> None:
        """ "Keep the person" where this engine has HyperStyle for this domain; greyed, with why, elsewhere."""
        was = self.keep_person.get_sensitive()
        self.keep_person.set_sensitive(high)
        self.keep_person.set_tooltip_text(
            "Invert the photo with HyperStyle: the edited face keeps the person's likeness; the first "
            "preview of a photo takes longer, the rest cost the same"
            if high
            else why_not
        )
        if was != high:
            self.changed()  # the request follows what the box can do

    def set_actions(self, setup: bool, setup_running: bool, diagnose: bool) -> None:
        self.setup_button.set_visible(setup)
        self.cancel_setup_button.set_visible(setup_running)
        self.diagnose_button.set_visible(diagnose)
        self.actions_row.set_visible(setup or setup_running or diagnose)
        self._fit()

    def setup_finished(self, result) -> None:
        """The set-up wrote the plug-in's settings (start command, autostart): take them up."""
        fresh = gimp_settings.load_settings(self.plugin_dir)
        for key in ("url", "token", "autostart", "start_command", "start_timeout"):
            self.settings[key] = fresh.get(key)
        can = gimp_edit.can_start(self.settings, self.url)
        self.editor.starter = gimp_edit.EngineStarter(dict(self.settings, url=self.url)) if can else None
        self.editor.autostart = bool(self.settings.get("autostart"))

    def setup_failed(self, error: BaseException) -> None:
        step = getattr(error, "step", "") or "?"
        lines = [getattr(error, "message", "") or str(error)]
        if getattr(error, "retry", ""):
            lines += ["", error.retry]
        tail = getattr(error, "log_tail", None) or []
        if tail:
            lines += ["", f"The last lines of its log ({getattr(error, 'log_path', '')}):", *tail]
        self._show_text(f"FFCLIP Edit: the set-up failed at step \u201c{step}\u201d", "\n".join(lines), diagnose=True)

    def _setup_clicked(self) -> None:
        from . import setup

        if setup.in_flatpak():  # a sandboxed GIMP cannot create the host's processes
            commands = "\n".join(setup.host_commands(self.plugin_dir))
            text = (
                "GIMP runs as a Flatpak here: its plug-ins cannot install or start programs on your "
                "computer. Run these commands in a terminal (outside GIMP), then come back: the dialog "
                f"connects to the engine by itself.\n\n{commands}"
            )
            self._show_text("FFCLIP Edit: set up the engine on this computer", text)
            return
        self._ask_setup()

    def _ask_setup(self) -> None:
        """Confirm the set-up (it installs gigabytes) and choose the trial profile; not modal-blocking:
        the answer arrives through `response`."""
        if self.setup_confirm is not None:
            self.setup_confirm.present()
            return
        from . import setup

        confirm = Gtk.Dialog(title="Set up the FFCLIP engine", transient_for=self.dialog, modal=True)
        confirm.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        confirm.add_button("_Set up", Gtk.ResponseType.OK)
        confirm.set_default_response(Gtk.ResponseType.OK)
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8, border_width=12)
        text = Gtk.Label(xalign=0.0, wrap=True, max_width_chars=60, width_chars=60)
        text.set_markup(
            "FFCLIP Edit will install its engine into a private Python environment in "
            f"<tt>{GLib.markup_escape_text(str(setup.data_dir()))}</tt>, "
            "register it to start with your session, and start it. PyTorch and the engine's other "
            "packages come from the Python package index (about 1 to 4 GB); the engine then fetches "
            "its model weights (about 1.5 GB) by itself. You can stop at any time: setting up again "
            "goes on where it stopped."
        )
        box.pack_start(text, False, False, 0)
        self.trial = Gtk.CheckButton.new_with_mnemonic(
            "_Trial only: small untrained networks, no model download (the edits are noise)"
        )
        box.pack_start(self.trial, False, False, 0)
        confirm.get_content_area().pack_start(box, False, False, 0)
        confirm.connect("response", self._setup_answer)
        confirm.show_all()
        self.setup_confirm = confirm

    def _setup_answer(self, confirm: Gtk.Dialog, response: int) -> None:
        profile = "tiny" if self.trial is not None and self.trial.get_active() else ""
        confirm.destroy()
        self.setup_confirm = self.trial = None
        if response == Gtk.ResponseType.OK:
            self.editor.setup(profile)

    def _diagnose(self) -> None:
        self._show_text("FFCLIP Edit: diagnosis", "Asking the FFCLIP doctor\u2026")
        url, settings, plugin_dir = self.url, dict(self.settings), self.plugin_dir

        def work() -> None:
            text = diagnose.report(settings, url, plugin_dir)
            GLib.idle_add(self._set_text, text)

        threading.Thread(target=work, name="ffclip-diagnose", daemon=True).start()

    def _show_text(self, title: str, text: str, diagnose: bool = False) -> None:
        """A window of selectable text (a report, commands to copy), with Copy; one at a time."""
        if self.text_window is not None:
            self.text_window.destroy()
        window = Gtk.Dialog(title=title, transient_for=self.dialog, modal=False)
        if diagnose:
            window.add_button("_Diagnose", RESPONSE_DIAGNOSE)
        window.add_button("C_opy", RESPONSE_COPY)
        window.add_button("_Close", Gtk.ResponseType.CLOSE)
        window.set_default_size(640, 360)
        view = Gtk.TextView(editable=False, wrap_mode=2, monospace=True, left_margin=8, right_margin=8)  # WORD
        view.get_buffer().set_text(text)
        scrolled = Gtk.ScrolledWindow(vexpand=True)
        scrolled.add(view)
        window.get_content_area().pack_start(scrolled, True, True, 0)
        window.connect("response", self._text_response)
        window.show_all()
        self.text_window, self.text_view = window, view

    def _set_text(self, text: str) -> bool:
        if self.text_view is not None:
            self.text_view.get_buffer().set_text(text)
        return False

    def _text_response(self, window: Gtk.Dialog, response: int) -> None:
        if response == RESPONSE_COPY and self.text_view is not None:
            buffer = self.text_view.get_buffer()
            text = buffer.get_text(buffer.get_start_iter(), buffer.get_end_iter(), False)
            Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD).set_text(text, -1)
            return
        window.destroy()
        if window is self.text_window:
            self.text_window = self.text_view = None
        if response == RESPONSE_DIAGNOSE:
            self._diagnose()

    def _fit(self) -> None:
        """As tall as the contents, no taller (a message that took two lines may now take one)."""
        self.dialog.resize(DIALOG_WIDTH, 1)

    def set_faces(self, labels: list[tuple[int, str]]) -> None:  # once, and only for faces
        for index, label in labels:
            self.faces.append(f"face:{index}", label)
        self.faces_listed = True
        self.faces_row.show_all()

    def set_busy(self, busy: bool) -> None:
        for widget in (self.rows_box, self.add_button, self.faces, self.domain, self.apply_button, self.presets):
            widget.set_sensitive(not busy)

    def close(self, applied: bool) -> None:
        Gtk.main_quit()

    # ------------------------------------------------------------------ live.Canvas

    def show_preview(self, result: EditResult, visible: bool, badges: list | None = None) -> None:
        self.preview.show(result, visible, badges)
        self.shown += 1

    def set_preview_visible(self, visible: bool) -> None:
        self.preview.set_visible(visible)

    def remove_preview(self) -> None:
        self.preview.remove()

    def place_result(self, result: EditResult, params: EditParams) -> None:
        self.preview.close()  # gone before the edit's one undo step
        output = self.opening.output
        new = self.pixels.new_layer(result, output)
        name = gimp_edit.layer_name(params)
        recipe = self._recipe(params, output)
        if self.opening.reopened is not None:
            replace_result(self.image, self.opening.reopened, self.source, name, new, recipe.to_bytes())
            self.new_layer = self.opening.reopened
        else:
            self.new_layer = place_result(self.image, self.source, name, new, recipe.to_bytes())
        if self.on_applied is not None:
            self.on_applied(params, output)
        self.settings["domain"] = params.domain  # the next dialog opens with it
        self.settings["recent_prompts"] = live.remember_prompts(
            self.settings.get("recent_prompts") or [], params.prompts
        )
        self._save_settings()

    def _recipe(self, params: EditParams, output: str) -> Recipe:
        digest = pixels_digest(self.pixels.rgba)  # the layer alone: what a reopened edit checks
        source = SourceRef(self.source.get_tattoo(), self.source.get_name(), digest)
        models = self.editor.last_status.get("models") or {}
        return Recipe.of(params, source, output, models)

    def _save_settings(self) -> None:
        with contextlib.suppress(OSError):
            gimp_settings.save_settings(self.plugin_dir, self.settings)

    # ------------------------------------------------------------------ running

    def _event(self, event: Event) -> bool:
        self.editor.on_event(event)
        return False  # a one-shot idle callback

    def _tick(self) -> bool:
        self.editor.tick()
        return not self.editor.closed

    def run(self) -> Gimp.Layer | None:
        self.opened_at = time.monotonic()
        self.place_beside_the_image()
        self.editor.tick()  # the engine's state asked at once
        GLib.timeout_add(TICK_MS, self._tick)
        script = os.environ.get("FFCLIP_DIALOG_SCRIPT")
        if script:
            _Replay(self, json.loads(Path(script).read_text()), os.environ.get("FFCLIP_DIALOG_LOG")).start()
        self.changed()
        try:
            Gtk.main()
        finally:
            self.preview.close()
            self.session.close()
            self.dialog.destroy()
        return self.new_layer


RESPONSE_RESET = 1  # Gtk response ids >= 0 are the application's own
RESPONSE_COPY = 2
RESPONSE_DIAGNOSE = 3


def ask_edit_as_it_is(problem: str) -> bool:
    """A reopened edit whose source is gone or changed: edit the FFCLIP layer as it now is (a new
    layer over it), or cancel. Never a silent edit of something else."""
    GimpUi.init("python-fu-ffclip-edit")
    dialog = Gtk.MessageDialog(
        message_type=Gtk.MessageType.QUESTION,
        buttons=Gtk.ButtonsType.NONE,
        text="FFCLIP Edit cannot reopen this edit",
    )
    dialog.format_secondary_text(
        problem + " You can edit this layer as it is now (the result goes into a new layer above it), or cancel."
    )
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button("_Edit the layer as it is now", Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.CANCEL)
    script = os.environ.get("FFCLIP_DIALOG_SCRIPT")
    if script:  # a scripted session answers from its steps
        steps = json.loads(Path(script).read_text())
        answer = next((s["source_problem"] for s in steps if "source_problem" in s), "cancel")
        _log_record({"step": "source_problem", "problem": problem, "answer": answer})
        dialog.destroy()
        return answer == "edit"
    answer = dialog.run()
    dialog.destroy()
    return answer == Gtk.ResponseType.OK


def _log_record(record: dict) -> None:
    path = os.environ.get("FFCLIP_DIALOG_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _ask_name(parent: Gtk.Window, suggestion: str) -> str | None:
    """A small modal asking for a preset's name."""
    dialog = Gtk.Dialog(title="Save preset", transient_for=parent, modal=True)
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button("_Save", Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    entry = Gtk.Entry(text=suggestion, activates_default=True)
    dialog.get_content_area().pack_start(Gtk.Label(label="Name of the preset:", xalign=0.0), False, False, 6)
    dialog.get_content_area().pack_start(entry, False, False, 6)
    dialog.show_all()
    answer = dialog.run()
    name = entry.get_text()
    dialog.destroy()
    return name if answer == Gtk.ResponseType.OK else None


class _Replay:
    """A user's session acted out on the dialog's own widgets, one step at a time on the main loop.

    Steps (JSON objects): {"type": TEXT, "row": N, "key_s": 0.08} types TEXT key by key into row N;
    {"clear": true, "row": N} empties row N; {"enter": true, "row": N} presses Enter in it;
    {"slider": V, "row": N}; {"add_row": true}; {"faces": ID}; {"domain": "car"}; {"keep_person": true};
    {"before": true|false}; {"wait_preview": true} until a new preview is drawn; {"wait_engine": TEXT}
    until the engine line holds TEXT; {"start": true} presses Start; {"setup": true} presses Set up;
    {"setup_answer": "tiny"|""|"cancel"} answers its confirmation; {"stop_setup": true} stops it;
    {"diagnose": true}; {"close_text": true} closes the report or commands window; {"reset": true};
    {"preset_save": NAME}; {"preset": NAME}; {"touch": PATH} creates a file (the test acts on it);
    {"paint": true} paints a stroke on the photo layer as a user's brush would (the paintbrush through
    the PDB, the image's undo as GIMP keeps it); {"shot": PATH, "area": [X, Y, W, H]} saves the screen
    (or that part of it) as PNG; {"note": LABEL} logs the image's layers and the preview;
    {"move": [X, Y]} places the dialog; {"sleep": S}; {"apply": true}; {"cancel": true}."""

    def __init__(self, dialog: LiveDialog, steps: list[dict], log_path: str | None) -> None:
        self.dialog, self.steps, self.log_path = dialog, steps, log_path
        self.task = self._run()

    def start(self) -> None:
        GLib.timeout_add(100, self._next)

    def _next(self) -> bool:
        try:
            delay = next(self.task)
        except StopIteration:
            return False
        GLib.timeout_add(int(delay * 1000), self._next)
        return False

    def _run(self):
        d = self.dialog
        for step in self.steps:
            row = d.rows[step.get("row", 0)] if d.rows else None
            if "type" in step:
                for n in range(1, len(step["type"]) + 1):
                    row.entry.set_text(step["type"][:n])
                    yield step.get("key_s", 0.08)
            elif "clear" in step:
                row.entry.set_text("")
            elif "enter" in step:
                row.entry.activate()
            elif "slider" in step:
                row.adjustment.set_value(step["slider"])
            elif "add_row" in step:
                d.add_button.clicked()
            elif "faces" in step:
                d.faces.set_active_id(step["faces"])
            elif "domain" in step:
                d.domain.set_active_id(step["domain"])
            elif "before" in step:
                d.before.set_active(step["before"])
            elif "keep_person" in step:
                d.keep_person.set_active(step["keep_person"])
            elif "wait_preview" in step:
                seen = d.shown
                for _ in range(int(step.get("timeout", 120) * 10)):
                    if d.shown > seen:
                        break
                    yield 0.1
                self._log({"step": "wait_preview", "drawn": d.shown > seen})
            elif "wait_engine" in step:
                for _ in range(int(step.get("timeout", 120) * 10)):
                    if step["wait_engine"] in d.engine_label.get_text():
                        break
                    yield 0.1
                self._log({"step": "wait_engine", "engine": d.engine_label.get_text()})
            elif "start" in step:
                d.start_button.clicked()
            elif "setup" in step:  # the button; the confirmation opens (or, in a Flatpak, the commands)
                d.setup_button.clicked()
            elif "setup_answer" in step:  # "tiny", "" (the real models) or "cancel"
                if d.setup_confirm is not None:
                    d.trial.set_active(step["setup_answer"] == "tiny")
                    cancel = step["setup_answer"] == "cancel"
                    d.setup_confirm.response(Gtk.ResponseType.CANCEL if cancel else Gtk.ResponseType.OK)
            elif "stop_setup" in step:
                d.cancel_setup_button.clicked()
            elif "diagnose" in step:
                d.diagnose_button.clicked()
            elif "close_text" in step:
                if d.text_window is not None:
                    d.text_window.response(Gtk.ResponseType.CLOSE)
            elif "reset" in step:
                d.dialog.response(RESPONSE_RESET)
            elif "preset_save" in step:
                d._save_preset(step["preset_save"])
            elif "preset" in step:
                d.presets.set_active_id(step["preset"])
            elif "paint" in step:
                self._paint()
            elif "touch" in step:  # tells the test on the host that this point was reached
                Path(step["touch"]).touch()
            elif "shot" in step:
                yield 0.5  # let the canvas and the dialog repaint
                root = Gdk.get_default_root_window()
                x, y, w, h = step.get("area") or (0, 0, root.get_width(), root.get_height())
                shot = Gdk.pixbuf_get_from_window(root, x, y, w, h)
                shot.savev(step["shot"], "png", [], [])
                self._log({"step": "shot", "path": step["shot"]})
            elif "note" in step:
                self._log({"step": "note", "label": step["note"], **self.observe()})
            elif "move" in step:
                d.dialog.move(*step["move"])
            elif "sleep" in step:
                yield step["sleep"]
            elif "apply" in step:
                d.apply_button.clicked()
            elif "cancel" in step:
                d.dialog.response(Gtk.ResponseType.CANCEL)
            yield 0.05

    def _paint(self) -> None:
        """A stroke across the photo layer, as the paintbrush leaves it (one undo step in GIMP)."""
        layer = self.dialog.source
        w, h = layer.get_width(), layer.get_height()
        Gimp.context_push()
        Gimp.context_set_foreground(_colour(255, 0, 0))
        Gimp.context_set_brush_size(max(4.0, w / 40))
        Gimp.paintbrush_default(layer, [w * 0.1, h * 0.9, w * 0.5, h * 0.85, w * 0.9, h * 0.9])
        Gimp.context_pop()
        Gimp.displays_flush()

    def observe(self) -> dict:
        d = self.dialog
        layer = d.preview.layer
        preview = None
        if layer is not None and layer.is_valid():
            rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
            data = bytes(layer.get_buffer().get(rect, 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))
            preview = {
                "visible": d.preview.visible,
                "region": list(d.preview.region or ()),
                "sha1": _sha1(data),
                "locked": layer.get_lock_content(),
            }
        return {
            "layers": [item.get_name() for item in d.image.get_layers()],
            "selected": [item.get_name() for item in d.image.get_selected_layers()],
            "preview": preview,
            "undo_enabled": d.image.undo_is_enabled(),
            "dirty": d.image.is_dirty(),
            "engine": d.engine_label.get_text(),
            "start_button": d.start_button.get_visible(),
            "keep_person": [d.keep_person.get_sensitive(), d.keep_person.get_active()],
            "fidelity": d.editor.fidelity,
            "shown_fidelity": d.editor.shown.fidelity if d.editor.shown is not None else None,
            "actions": [b.get_visible() for b in (d.setup_button, d.cancel_setup_button, d.diagnose_button)],
            "text_window": _text(d.text_view),
            "domain": d.domain.get_active_id(),
            "status": d.progress.get_text(),
            "rows": [row.value for row in d.rows],
            "completion_popup": d.rows[0].entry.get_completion().get_popup_completion() if d.rows else None,
            "seconds": round(time.monotonic() - d.opened_at, 2),  # since the dialog opened
        }

    def _log(self, record: dict) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _colour(r: int, g: int, b: int):
    gi.require_version("Gegl", "0.4")
    colour = Gegl.Color.new("black")
    colour.set_rgba(r / 255, g / 255, b / 255, 1.0)
    return colour


def _text(view: Gtk.TextView | None) -> str | None:
    if view is None:
        return None
    buffer = view.get_buffer()
    return buffer.get_text(buffer.get_start_iter(), buffer.get_end_iter(), False)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
