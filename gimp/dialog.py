"""FFCLIP Edit's live dialog: GTK widgets (through GimpUi) bound to live.LiveEditor.

Up to four attribute rows (a prompt with completion, a strength slider), what to edit (faces, or
the car / church in the selection), a face chooser once the photo shows several faces, a
before/after switch, the engine's state and the job's progress. The preview is a temporary layer
on the canvas (layers.PreviewLayer); Apply leaves one masked layer in one undo step, Cancel leaves
the image as it was. Every decision is LiveEditor's; this module only reads widgets, draws what it
is told, and carries engine events from the session's threads to GTK's main loop. Runs only inside
GIMP.

`FFCLIP_DIALOG_SCRIPT` (a JSON file of steps) makes the dialog act out a user's session on its own
widgets — typing, sliders, buttons, screenshots — which the real-GIMP tests and the documentation
screenshots use; `FFCLIP_DIALOG_LOG` receives what it saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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

from . import edit as gimp_edit  # noqa: E402
from . import live  # noqa: E402
from . import settings as gimp_settings  # noqa: E402
from .layers import RGBA, LayerPixels, PreviewLayer, place_result  # noqa: E402

TICK_MS = 50
HINT = (
    "Describe the change, e.g. <i>smiling</i> or <i>grey hair</i>; add rows to change several things at "
    "once. The preview on the canvas follows as you type; <b>Apply</b> renders it at full resolution "
    "into a new layer."
)


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
        self.scale = Gtk.Scale.new_with_range(
            Gtk.Orientation.HORIZONTAL, gimp_edit.STRENGTH_MIN, gimp_edit.STRENGTH_MAX, 0.05
        )
        self.scale.set_value(strength)
        self.scale.set_digits(2)
        self.scale.set_size_request(170, -1)
        self.scale.set_tooltip_text("Strength (1 = the edit as trained, 0 = none)")
        self.remove = Gtk.Button.new_from_icon_name("list-remove-symbolic", Gtk.IconSize.BUTTON)
        self.remove.set_tooltip_text("Remove this attribute")
        for widget in (self.entry, self.scale, self.remove):
            self.box.pack_start(widget, widget is self.entry, True, 0)
        self.entry.connect("changed", lambda *_: dialog.changed())
        self.scale.connect("value-changed", lambda *_: dialog.changed())
        self.remove.connect("clicked", lambda *_: dialog.remove_row(self))

    @property
    def value(self) -> tuple[str, float]:
        return self.entry.get_text(), round(self.scale.get_value(), 2)


class LiveDialog:
    """live.Canvas and live.View for LiveEditor; `run()` returns the new layer or None."""

    def __init__(
        self,
        image: Gimp.Image,
        layer: Gimp.Layer,
        settings: dict,
        plugin_dir: str,
        first: tuple,
        domain: str | None = None,
    ) -> None:
        GimpUi.init("python-fu-ffclip-edit")
        # a script's explicit domain, else the one of the last dialog (settings)
        self.first_domain = domain if domain not in (None, "face") else settings.get("domain") or "face"
        self.image, self.source = image, layer
        self.settings, self.plugin_dir = settings, plugin_dir
        self.pixels = LayerPixels(image, layer)
        if gimp_edit.selection_is_full(self.pixels.selection):
            self.pixels.selection = None
        self.preview = PreviewLayer(self.pixels)
        self.new_layer: Gimp.Layer | None = None
        self.url = gimp_settings.resolve_url(None, settings)
        self.session = EngineSession(
            self.url,
            lambda e: GLib.idle_add(self._event, e),
            token=settings.get("token"),
            tls=gimp_edit.session_tls(settings),
        )
        start = self._start_engine if settings.get("autostart") and gimp_settings.is_local_url(self.url) else None
        port = _EnginePort(self.session, self.pixels)
        self.editor = live.LiveEditor(port, self, self, self.pixels.width, start_engine=start)
        self.shown = 0  # previews drawn, for the scripted runs
        self.faces_listed = False
        self._completion_model = Gtk.ListStore(str)
        training = live.training_prompts()
        for prompt in live.suggestions(settings.get("recent_prompts") or [], training):
            self._completion_model.append([prompt])
        self._build(first)

    # ------------------------------------------------------------------ widgets

    def _build(self, first: tuple) -> None:
        self.dialog = GimpUi.Dialog(title="FFCLIP Edit", role="ffclip-edit", use_header_bar=False)
        self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.apply_button = self.dialog.add_button("_Apply", Gtk.ResponseType.OK)
        self.dialog.set_default_size(560, -1)
        self.dialog.connect("response", self._response)
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8, border_width=12)
        self.dialog.get_content_area().pack_start(box, True, True, 0)

        hint = Gtk.Label(xalign=0.0, wrap=True, max_width_chars=60)
        hint.set_markup(HINT)
        box.pack_start(hint, False, False, 0)
        self.rows_box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.pack_start(self.rows_box, False, False, 0)
        self.rows: list[_Row] = []
        self.add_button = Gtk.Button.new_with_mnemonic("_Add an attribute")
        self.add_button.connect("clicked", lambda *_: self.add_row("", gimp_edit.STRENGTH_DEFAULT))
        box.pack_start(self.add_button, False, False, 0)

        self.domain = Gtk.ComboBoxText()
        for nick, label in gimp_edit.DOMAIN_CHOICES:
            self.domain.append(nick, label)
        if not self.domain.set_active_id(self.first_domain):
            self.domain.set_active_id("face")
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
        self.faces.connect("changed", lambda *_: self.changed())
        self.faces_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.faces_row.pack_start(Gtk.Label(label="Faces:"), False, False, 0)
        self.faces_row.pack_start(self.faces, True, True, 0)
        box.pack_start(self.faces_row, False, False, 0)

        self.before = Gtk.CheckButton.new_with_mnemonic("Show the _original (before)")
        self.before.connect("toggled", lambda b: self.editor.toggle_before(b.get_active()))
        box.pack_start(self.before, False, False, 0)
        self.engine_label = Gtk.Label(label="Connecting to the FFCLIP engine\u2026", xalign=0.0, wrap=True)
        box.pack_start(self.engine_label, False, False, 0)
        self.progress = Gtk.ProgressBar(show_text=True, text="")
        box.pack_start(self.progress, False, False, 0)

        prompt, strength = first
        self.add_row(prompt, strength)
        self.dialog.show_all()
        self.faces_row.hide()  # until the photo shows several faces

    def completion(self) -> Gtk.EntryCompletion:
        completion = Gtk.EntryCompletion(model=self._completion_model, minimum_key_length=1)
        completion.set_text_column(0)
        completion.set_inline_selection(True)
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
        choice = self.faces.get_active_id() or "all"
        faces: Any = (int(choice.split(":")[1]),) if choice.startswith("face:") else choice
        domain = self.domain.get_active_id() or "face"
        self.editor.input_changed([row.value for row in self.rows], faces, domain)

    def _domain_changed(self) -> None:
        if (self.domain.get_active_id() or "face") != "face":
            self.faces.set_active_id("all")
            self.faces_row.hide()
        elif self.faces_listed:  # back to faces: the chooser the photo's faces filled
            self.faces_row.show_all()
        self.changed()

    def _response(self, _dialog, response: int) -> None:
        if response == Gtk.ResponseType.OK:
            self.editor.apply()
        else:
            self.editor.cancel()

    # ------------------------------------------------------------------ live.View

    def set_status(self, text: str, fraction: float | None = None) -> None:
        self.progress.set_text(text)
        if fraction is None:
            self.progress.pulse()
        else:
            self.progress.set_fraction(fraction)

    def set_engine(self, text: str, ready: bool) -> None:
        self.engine_label.set_text(text)

    def set_faces(self, labels: list[tuple[int, str]]) -> None:  # once, and only for faces
        for index, label in labels:
            self.faces.append(f"face:{index}", label)
        self.faces_listed = True
        self.faces_row.show_all()

    def set_busy(self, busy: bool) -> None:
        for widget in (self.rows_box, self.add_button, self.faces, self.domain, self.apply_button):
            widget.set_sensitive(not busy)

    def close(self, applied: bool) -> None:
        Gtk.main_quit()

    # ------------------------------------------------------------------ live.Canvas

    def show_preview(self, result: EditResult, visible: bool) -> None:
        self.preview.show(result, visible)
        self.shown += 1

    def set_preview_visible(self, visible: bool) -> None:
        self.preview.set_visible(visible)

    def remove_preview(self) -> None:
        self.preview.remove()

    def place_result(self, result: EditResult, params: EditParams) -> None:
        self.preview.close(changed=True)  # the undo history back first: the new layer is its one new step
        new = self.pixels.new_layer(result, "layer-mask")
        self.new_layer = place_result(self.image, self.source, gimp_edit.layer_name(params), new)
        self.settings["domain"] = params.domain  # the next dialog opens with it
        self.settings["recent_prompts"] = live.remember_prompts(
            self.settings.get("recent_prompts") or [], params.prompts
        )
        with contextlib.suppress(OSError):
            gimp_settings.save_settings(self.plugin_dir, self.settings)

    # ------------------------------------------------------------------ running

    def _event(self, event: Event) -> bool:
        self.editor.on_event(event)
        return False  # a one-shot idle callback

    def _tick(self) -> bool:
        self.editor.tick()
        return not self.editor.closed

    def _start_engine(self) -> None:
        with contextlib.suppress(gimp_edit.PluginError):
            gimp_edit.start_engine(dict(self.settings, url=self.url), gimp_edit.Progress())

    def run(self) -> Gimp.Layer | None:
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


class _Replay:
    """A user's session acted out on the dialog's own widgets, one step at a time on the main loop.

    Steps (JSON objects): {"type": TEXT, "row": N, "key_s": 0.08} types TEXT key by key into row N;
    {"slider": V, "row": N}; {"add_row": true}; {"faces": ID}; {"domain": "car"}; {"before": true|false};
    {"wait_preview": true} until a new preview is drawn; {"shot": PATH, "area": [X, Y, W, H]} saves
    the screen (or that part of it) as PNG;
    {"note": LABEL} logs the image's layers and the preview; {"move": [X, Y]} places the dialog;
    {"sleep": S}; {"apply": true}; {"cancel": true}."""

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
            elif "slider" in step:
                row.scale.set_value(step["slider"])
            elif "add_row" in step:
                d.add_button.clicked()
            elif "faces" in step:
                d.faces.set_active_id(step["faces"])
            elif "domain" in step:
                d.domain.set_active_id(step["domain"])
            elif "before" in step:
                d.before.set_active(step["before"])
            elif "wait_preview" in step:
                seen = d.shown
                for _ in range(int(step.get("timeout", 120) * 10)):
                    if d.shown > seen:
                        break
                    yield 0.1
                self._log({"step": "wait_preview", "drawn": d.shown > seen})
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

    def observe(self) -> dict:
        d = self.dialog
        layer = d.preview.layer
        preview = None
        if layer is not None:
            rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
            data = bytes(layer.get_buffer().get(rect, 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))
            preview = {"visible": layer.get_visible(), "region": list(d.preview.region), "sha1": _sha1(data)}
        return {
            "layers": [item.get_name() for item in d.image.get_layers()],
            "preview": preview,
            "undo_enabled": d.image.undo_is_enabled(),
            "dirty": d.image.is_dirty(),
            "engine": d.engine_label.get_text(),
            "domain": d.domain.get_active_id(),
            "status": d.progress.get_text(),
        }

    def _log(self, record: dict) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
