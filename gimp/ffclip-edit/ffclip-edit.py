#!/usr/bin/env python3
# FFCLIP Edit: free-form text-driven face editing for GIMP 3.
#
# Filters > FFCLIP Edit...   (python-fu-ffclip-edit)    edit the faces of the active layer
# Filters > FFCLIP Cancel    (python-fu-ffclip-cancel)  cancel the running edit
# Filters > FFCLIP Set up the engine... (python-fu-ffclip-setup)  set up the engine on this computer
#
# This file only talks to GIMP; everything else is in the `ffclip` folder next to it (copies of the
# project's ffclip.plugin and ffclip.gimp packages, standard library only). Installed by
# `ffclip-engine install-gimp-plugin`; the engine daemon is `ffclip-engine serve`.

import contextlib
import os
import sys
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the installed copies (or, from a checkout, the project installed)
from ffclip.gimp import edit as gimp_edit  # noqa: E402
from ffclip.gimp import layers, live, recipe  # noqa: E402
from ffclip.gimp import settings as gimp_settings  # noqa: E402
from ffclip.gimp import setup as gimp_setup  # noqa: E402
from ffclip.plugin import paths  # noqa: E402


class GimpProgress(gimp_edit.Progress):
    def __init__(self):
        self.started = False

    def text(self, message):
        if not self.started:
            Gimp.progress_init(message)
            self.started = True
        else:
            Gimp.progress_set_text(message)

    def fraction(self, value):
        Gimp.progress_update(value)

    def pulse(self):
        Gimp.progress_pulse()

    def end(self):
        if self.started:
            Gimp.progress_end()


def _fail(procedure, message, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(message))


def _log_unexpected():
    path = paths.state_dir() / paths.PLUGIN_LOG
    try:
        paths.private_folder(path.parent)
        with paths.open_private(path, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc() + "\n")
    except OSError:
        return ""
    return f" (details in {path})"


def ffclip_edit(procedure, run_mode, image, drawables, config, data):
    settings = gimp_settings.load_settings(HERE)
    layer = _the_layer(drawables)
    if layer is None:
        return _fail(
            procedure,
            "Select exactly one layer (not a channel) to edit with FFCLIP.",
            Gimp.PDBStatusType.CALLING_ERROR,
        )
    try:
        target = _target(image, layer)
    except recipe.RecipeError as exc:
        return _fail(procedure, f"This layer's FFCLIP recipe cannot be read ({exc}); select the photo layer.")
    if run_mode == Gimp.RunMode.INTERACTIVE:
        return _live(procedure, image, target, config, settings)
    return _edit(procedure, image, target, config, settings, run_mode)


class Target:
    """What an edit works on: a photo layer, or an FFCLIP layer reopened (its recipe, its source)."""

    def __init__(self, layer, recipe=None, source=None, problem=None):
        self.layer, self.recipe, self.source, self.problem = layer, recipe, source, problem

    @property
    def reopened(self):
        return self.recipe is not None and self.problem is None


def _the_layer(drawables):
    """The one layer to edit; a layer mask stands for its layer (a mask is often the active drawable)."""
    if len(drawables) != 1:
        return None
    drawable = drawables[0]
    if isinstance(drawable, Gimp.LayerMask):
        return Gimp.Layer.from_mask(drawable)
    return drawable if isinstance(drawable, Gimp.Layer) else None


def _target(image, layer):
    data = layers.read_recipe(layer)
    if data is None:
        return Target(layer)
    found = recipe.Recipe.from_bytes(data)
    source = image.get_layer_by_tattoo(found.source.tattoo)
    digest = recipe.pixels_digest(layers.LayerPixels(image, source).rgba) if source is not None else None
    return Target(layer, found, source, recipe.check_source(found, source is not None, digest))


def _args(config):
    return gimp_edit.ProcedureArgs(
        prompt=config.get_property("prompt"),
        strength=config.get_property("strength"),
        face_mode=config.get_property("faces"),
        face_index=config.get_property("face-index"),
        output=config.get_property("output"),
        url=config.get_property("engine-url") or None,
        more_edits=config.get_property("more-edits") or "",
        domain=config.get_property("domain"),
        fidelity=config.get_property("fidelity"),
    )


def _keep_last(settings, params, output):
    """The last edit, for Filters > Repeat after a script's run (GIMP keeps a dialog's itself)."""
    args = gimp_edit.ProcedureArgs.of(params, output)
    settings["last_edit"] = {k: v for k, v in args.__dict__.items() if k != "url"}
    with contextlib.suppress(OSError):
        gimp_settings.save_settings(HERE, settings)


def _remember(config, params, output):
    """The applied edit as the procedure's arguments: GIMP keeps them as its last values (Filters >
    Repeat and Re-Show, RunMode.WITH_LAST_VALS, the next dialog)."""
    args = gimp_edit.ProcedureArgs.of(params, output)
    config.set_property("prompt", args.prompt)
    config.set_property("strength", args.strength)
    config.set_property("more-edits", args.more_edits)
    config.set_property("faces", args.face_mode)
    config.set_property("face-index", args.face_index)
    config.set_property("domain", args.domain)
    config.set_property("fidelity", args.fidelity)
    config.set_property("output", args.output)


def _live(procedure, image, target, config, settings):
    """The live dialog: previews on the canvas as the user types; Apply leaves the edited layer."""
    try:
        from ffclip.gimp.dialog import LiveDialog, Opening, ask_edit_as_it_is

        source, opening = target.layer, None
        if target.recipe is not None and target.problem is not None:
            if not ask_edit_as_it_is(target.problem):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        elif target.reopened:
            r = target.recipe
            source = target.source
            rows = [(e.prompt, e.strength) for e in r.edits]
            opening = Opening(rows, r.domain, r.faces, r.output, target.layer, r, r.fidelity)
        if opening is None:
            args = _args(config)
            rows = live.args_rows(args.prompt, args.strength, args.more_edits)
            domain = args.domain if args.domain != "face" else settings.get("domain") or "face"
            faces = args.face_mode if args.face_mode in ("all", "largest") else "all"
            opening = Opening(rows, domain, faces, args.output, fidelity=args.fidelity)
        dialog = LiveDialog(image, source, settings, HERE, opening, lambda p, o: _remember(config, p, o))
        new = dialog.run()
    except gimp_edit.PluginError as exc:  # e.g. an unusable certificate setting
        return _fail(procedure, str(exc))
    except Exception:  # noqa: BLE001 - a dialog problem must not become a traceback
        return _fail(procedure, "FFCLIP Edit could not run its dialog" + _log_unexpected())
    if new is None:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    return _done(new)


def _edit(procedure, image, target, config, settings, run_mode=Gimp.RunMode.NONINTERACTIVE):
    """A script's, a batch's or Filters > Repeat's edit: the procedure's arguments, no dialog. With an
    FFCLIP layer selected, its source is edited again with these arguments and the layer replaced."""
    if target.recipe is not None and target.problem is not None:
        return _fail(procedure, target.problem + " Select the layer itself to edit it as it is now.")
    args = _args(config)
    if run_mode == Gimp.RunMode.WITH_LAST_VALS and not (args.prompt or "").strip():
        # GIMP keeps a procedure's last values after a dialog only; a script's edit is kept here too
        args = gimp_edit.ProcedureArgs(**{**gimp_edit.ProcedureArgs("").__dict__, **(settings.get("last_edit") or {})})
    source = target.source if target.reopened else target.layer
    progress = GimpProgress()
    try:
        params = args.params()
        px = layers.LayerPixels(image, source)
        new = gimp_edit.run_edit(
            params, args.output, args.url, px.rgba, px.width, px.height, px.selection, settings, progress
        )
        _keep_last(settings, params, args.output)
        name = gimp_edit.layer_name(params)
        source_ref = recipe.SourceRef(source.get_tattoo(), source.get_name(), recipe.pixels_digest(px.rgba))
        made = recipe.Recipe.of(params, source_ref, args.output, new.models)
        if target.reopened:
            layers.replace_result(image, target.layer, source, name, new, made.to_bytes())
            return _done(target.layer)
        return _done(layers.place_result(image, source, name, new, made.to_bytes()))
    except gimp_edit.Cancelled as exc:
        return _fail(procedure, str(exc), Gimp.PDBStatusType.CANCEL)
    except gimp_edit.PluginError as exc:
        return _fail(procedure, str(exc))
    except Exception as exc:  # noqa: BLE001 - never show a traceback to the user
        return _fail(procedure, f"FFCLIP Edit failed: {type(exc).__name__}: {exc}" + _log_unexpected())
    finally:
        progress.end()


def _done(layer):
    return Gimp.ValueArray.new_from_values(
        [GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS), GObject.Value(Gimp.Layer, layer)]
    )


def ffclip_cancel(procedure, config, data):
    run_mode = config.get_property("run-mode")
    try:
        message = gimp_edit.cancel_running(gimp_settings.load_settings(HERE))
    except gimp_edit.PluginError as exc:
        return _fail(procedure, str(exc))
    except Exception as exc:  # noqa: BLE001
        return _fail(procedure, f"FFCLIP Cancel failed: {type(exc).__name__}: {exc}" + _log_unexpected())
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(message)
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def ffclip_setup(procedure, config, data):
    """Set up the engine on this computer (gimp/setup.py): progress through Gimp.progress and on the
    console; on failure an error status with the step, the message, the log's last lines and what to do."""
    run_mode = config.get_property("run-mode")
    profile = (config.get_property("profile") or "").strip()
    if profile not in gimp_setup.PROFILES:
        return _fail(procedure, f'profile must be "" or "tiny", not {profile!r}', Gimp.PDBStatusType.CALLING_ERROR)
    progress = GimpProgress()
    shown, began = [None], time.monotonic()

    def on_event(event):
        progress.text(f"[{event.step}/{event.steps}] {event.text}")
        if event.fraction is not None:
            progress.fraction(event.fraction)
        line = f"{event.step}/{event.steps} {event.name}: {event.text}"
        every_byte = event.done_bytes not in (None, 0) and event.fraction != 1.0  # not each byte count
        if not every_byte and line != shown[0]:
            print(f"ffclip-setup: {time.monotonic() - began:7.1f} s  {line}", file=sys.stderr, flush=True)
            shown[0] = line

    try:
        result = gimp_setup.Setup(HERE, profile, on_event=on_event).run()
    except gimp_setup.SetupError as exc:
        tail = "\n".join(exc.log_tail)
        text = f"FFCLIP set-up failed at its {exc.step} step: {exc.message}\n{exc.retry}"
        if tail:
            text += f"\nLast lines of {exc.log_path}:\n{tail}"
        status = Gimp.PDBStatusType.CANCEL if isinstance(exc, gimp_setup.SetupCancelled) else None
        return _fail(procedure, text, status or Gimp.PDBStatusType.EXECUTION_ERROR)
    except Exception as exc:  # noqa: BLE001
        return _fail(procedure, f"FFCLIP set-up failed: {type(exc).__name__}: {exc}" + _log_unexpected())
    finally:
        progress.end()
    message = f"The FFCLIP engine is set up: {result.url} ({result.python}); service {result.service}"
    print(f"ffclip-setup: {message}", file=sys.stderr, flush=True)
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(message)
    return Gimp.ValueArray.new_from_values(
        [
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(GObject.TYPE_STRING, result.url),
            GObject.Value(GObject.TYPE_STRING, str(result.python)),
        ]
    )


class FfclipEdit(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False, None, None

    def do_query_procedures(self):
        return [gimp_edit.PROCEDURE, gimp_edit.CANCEL_PROCEDURE, gimp_setup.PROCEDURE]

    def do_create_procedure(self, name):
        if name == gimp_edit.CANCEL_PROCEDURE:
            return self._cancel_procedure(name)
        if name == gimp_setup.PROCEDURE:
            return self._setup_procedure(name)
        return self._edit_procedure(name)

    def _edit_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, ffclip_edit, None)
        procedure.set_image_types("*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(gimp_edit.MENU_LABEL)
        procedure.add_menu_path(gimp_edit.MENU_PATH)
        procedure.set_documentation(
            "Edit the faces (or a car or church) of a layer with a text prompt (FFCLIP)",
            "Sends the layer (and the selection, as a mask) to the FFCLIP engine daemon and puts the "
            "edited faces in a new layer 'FFCLIP: <prompt> <strength>' above it, with a layer mask from "
            "the blend mask, in one undo step. With domain car or church, the selection (or the whole "
            "layer) is the car or church to edit. With an FFCLIP layer selected, its source is edited "
            "again (its recipe's edits, or the given prompt) and that layer replaced in place. Start the "
            "engine with 'ffclip-engine serve'.",
            name,
        )
        procedure.set_attribution("FFCLIP Edit contributors", "FFCLIP Edit contributors", "2025")
        flags = GObject.ParamFlags.READWRITE
        procedure.add_string_argument("prompt", "_Prompt", "What to change, e.g. 'smiling, blond hair'", "", flags)
        procedure.add_double_argument(
            "strength",
            "_Strength",
            "Edit strength (1 = as trained)",
            gimp_edit.STRENGTH_MIN,
            gimp_edit.STRENGTH_MAX,
            gimp_edit.STRENGTH_DEFAULT,
            flags,
        )
        faces = Gimp.Choice.new()
        for i, (nick, label) in enumerate(gimp_edit.FACE_MODES):
            faces.add(nick, i, label, "")
        procedure.add_choice_argument("faces", "_Faces", "Which faces to edit", faces, "all", flags)
        procedure.add_int_argument(
            "face-index",
            "Face _number",
            "With faces = index: the face to edit as the engine numbers them, 0 = its most confident "
            "detection (`ffclip-engine faces PHOTO` lists them; the dialog numbers faces from the left)",
            0,
            99,
            0,
            flags,
        )
        output = Gimp.Choice.new()
        for i, (nick, label) in enumerate(gimp_edit.OUTPUT_MODES):
            output.add(nick, i, label, "")
        procedure.add_choice_argument("output", "_Output", "What to create", output, "layer-mask", flags)
        procedure.add_string_argument(
            "engine-url", "_Engine URL", "Engine daemon URL; empty: the saved setting", "", flags
        )
        procedure.add_string_argument(
            "more-edits",
            "More attributes",
            "Further attributes edited at once, one PROMPT=STRENGTH a line (up to three)",
            "",
            flags,
        )
        domains = Gimp.Choice.new()
        for i, (nick, label) in enumerate(gimp_edit.DOMAIN_CHOICES):
            domains.add(nick, i, label, "")
        procedure.add_choice_argument(
            "domain", "_Domain", "What to edit: faces, or the car / church in the selection", domains, "face", flags
        )
        fidelities = Gimp.Choice.new()
        for i, (nick, label) in enumerate(gimp_edit.FIDELITY_CHOICES):
            fidelities.add(nick, i, label, "")
        procedure.add_choice_argument(
            "fidelity",
            "Fi_delity",
            "standard: e4e's inversion; high: HyperStyle keeps the person's likeness (slower the first time)",
            fidelities,
            "standard",
            flags,
        )
        procedure.add_layer_return_value("layer", "Layer", "The new layer", False, flags)
        return procedure

    def _cancel_procedure(self, name):
        procedure = Gimp.Procedure.new(self, name, Gimp.PDBProcType.PLUGIN, ffclip_cancel, None)
        procedure.set_menu_label(gimp_edit.CANCEL_MENU_LABEL)
        procedure.add_menu_path(gimp_edit.MENU_PATH)
        procedure.set_documentation(
            "Cancel the running FFCLIP edit",
            "Asks the FFCLIP engine to stop the edit that FFCLIP Edit is waiting for.",
            name,
        )
        procedure.set_attribution("FFCLIP Edit contributors", "FFCLIP Edit contributors", "2025")
        procedure.add_enum_argument(
            "run-mode",
            "Run mode",
            "The run mode",
            Gimp.RunMode,
            Gimp.RunMode.NONINTERACTIVE,
            GObject.ParamFlags.READWRITE,
        )
        return procedure

    def _setup_procedure(self, name):
        procedure = Gimp.Procedure.new(self, name, Gimp.PDBProcType.PLUGIN, ffclip_setup, None)
        procedure.set_menu_label(gimp_setup.MENU_LABEL)
        procedure.add_menu_path(gimp_edit.MENU_PATH)
        procedure.set_documentation(
            "Set up the FFCLIP engine on this computer",
            "Finds a Python 3.10+ on this computer, makes a private environment in the user's data folder, "
            "installs torch and the engine (the wheel in this plug-in's folder) from the package index, "
            "registers the desktop service where there is one, writes the plug-in's settings and starts the "
            "engine. A re-run resumes. Profile 'tiny': the untrained trial engine (no model download).",
            name,
        )
        procedure.set_attribution("FFCLIP Edit contributors", "FFCLIP Edit contributors", "2025")
        flags = GObject.ParamFlags.READWRITE
        procedure.add_enum_argument(
            "run-mode", "Run mode", "The run mode", Gimp.RunMode, Gimp.RunMode.NONINTERACTIVE, flags
        )
        procedure.add_string_argument(
            "profile", "_Profile", "Empty: the real models; 'tiny': the untrained trial engine", "", flags
        )
        procedure.add_string_return_value("url", "URL", "The engine's URL", "", flags)
        procedure.add_string_return_value("python", "Python", "The private environment's interpreter", "", flags)
        return procedure


Gimp.main(FfclipEdit.__gtype__, sys.argv)
