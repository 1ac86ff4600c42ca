"""The plug-in's GIMP objects: the layer's pixels and selection in, the edited layer and the live
preview layer out. Imports GIMP's bindings, so it runs only inside GIMP (the logic it serves is
in edit.py and live.py, tested without GIMP).

Pixel conventions: layer pixels as RGBA8 rows (`R'G'B'A u8`, what GEGL converts any layer
precision and type to), selections and masks one byte per pixel (`Y u8`), layer-local coordinates.
"""

from __future__ import annotations

import contextlib

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

from ffclip.plugin.imageops import composite  # noqa: E402
from ffclip.plugin.protocol import EditResult  # noqa: E402

from .badges import draw_badges  # noqa: E402
from .edit import NewLayer, check_region, compose_result, crop  # noqa: E402
from .recipe import PARASITE  # noqa: E402

RGBA = "R'G'B'A u8"
MASK = "Y u8"
PREVIEW_NAME = "FFCLIP preview (temporary)"
NEW_LAYER_TYPE = {
    Gimp.ImageBaseType.RGB: Gimp.ImageType.RGBA_IMAGE,
    Gimp.ImageBaseType.GRAY: Gimp.ImageType.GRAYA_IMAGE,
    Gimp.ImageBaseType.INDEXED: Gimp.ImageType.INDEXEDA_IMAGE,
}


class LayerPixels:
    """A layer's RGBA8 pixels and the selection over it (None: no selection), read once."""

    def __init__(self, image: Gimp.Image, layer: Gimp.Layer) -> None:
        self.image, self.layer = image, layer
        self.width, self.height = layer.get_width(), layer.get_height()
        rect = Gegl.Rectangle.new(0, 0, self.width, self.height)
        self.rgba = bytes(layer.get_buffer().get(rect, 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))
        self.selection = None
        if not Gimp.Selection.is_empty(image):
            _, ox, oy = layer.get_offsets()
            # The selection lives in image coordinates; outside the canvas it reads as unselected.
            rect = Gegl.Rectangle.new(ox, oy, self.width, self.height)
            buffer = image.get_selection().get_buffer()
            self.selection = bytes(buffer.get(rect, 1.0, MASK, Gegl.AbyssPolicy.NONE))

    def new_layer(self, result: EditResult, output: str) -> NewLayer:
        """The pixels (and mask) of a layer over the result's region; `output` as in OUTPUT_MODES."""
        region = check_region(result.region, self.width, self.height)
        source = crop(self.rgba, self.width, self.height, region, 4)
        sel = crop(self.selection, self.width, self.height, region, 1) if self.selection is not None else None
        layer_rgba, mask = compose_result(bytes(result.rgba), source, sel, output)
        return NewLayer(region, layer_rgba, mask, result)


def place_result(
    image: Gimp.Image, source: Gimp.Layer, name: str, new: NewLayer, recipe: bytes | None = None
) -> Gimp.Layer:
    """The edited layer (and its mask, and its recipe) above `source`, in one undo step; the new
    layer, not its mask, is the active drawable afterwards (what Filters > Repeat works on)."""
    image.undo_group_start()
    try:
        layer = _insert_layer(image, source, name, new)
        if recipe is not None:
            layer.attach_parasite(_recipe_parasite(recipe))
        image.set_selected_layers([layer])
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layer


def replace_result(
    image: Gimp.Image, layer: Gimp.Layer, source: Gimp.Layer, name: str, new: NewLayer, recipe: bytes
) -> None:
    """A reopened edit applied again: the FFCLIP layer's pixels, mask, name and recipe replaced in
    place, in one undo step (the layer keeps its place, its tattoo and its other properties)."""
    x, y, w, h = new.region
    _, ox, oy = source.get_offsets()
    image.undo_group_start()
    try:
        if (layer.get_width(), layer.get_height()) != (w, h):
            layer.resize(w, h, 0, 0)
        layer.set_offsets(ox + x, oy + y)
        _write_undoable(layer, RGBA, new.layer_rgba, w, h)
        mask = layer.get_mask()
        if new.mask is not None:
            if mask is None:
                layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
                mask = layer.get_mask()
            _write_undoable(mask, MASK, new.mask, w, h)
        elif mask is not None:
            layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
        layer.set_edit_mask(False)
        layer.set_name(name)
        layer.attach_parasite(_recipe_parasite(recipe))
        image.set_selected_layers([layer])
    finally:
        image.undo_group_end()
    Gimp.displays_flush()


def read_recipe(layer: Gimp.Layer) -> bytes | None:
    """The layer's `ffclip-edit/recipe` parasite's data (None: not an FFCLIP layer)."""
    parasite = layer.get_parasite(PARASITE)
    return bytes(parasite.get_data()) if parasite is not None else None


def _recipe_parasite(recipe: bytes) -> Gimp.Parasite:
    # persistent: saved in the XCF; undoable: undoing the edit takes its recipe away with it
    return Gimp.Parasite.new(PARASITE, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(recipe))


def _insert_layer(image: Gimp.Image, above: Gimp.Layer, name: str, new: NewLayer) -> Gimp.Layer:
    x, y, w, h = new.region
    _, ox, oy = above.get_offsets()
    layer_type = NEW_LAYER_TYPE.get(image.get_base_type(), Gimp.ImageType.RGBA_IMAGE)
    layer = Gimp.Layer.new(image, name, w, h, layer_type, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, above.get_parent(), image.get_item_position(above))
    layer.set_offsets(ox + x, oy + y)
    _write(layer, RGBA, new.layer_rgba, w, h)
    if new.mask is not None:
        mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        _write(mask, MASK, new.mask, w, h)
        layer.set_edit_mask(False)  # the layer is what the user works on next, not its mask
    return layer


def _write(drawable: Gimp.Drawable, fmt: str, data: bytes, w: int, h: int, x: int = 0, y: int = 0) -> None:
    """Pixels straight into the drawable's buffer: no undo step, the image not marked changed."""
    buffer = drawable.get_buffer()
    buffer.set(Gegl.Rectangle.new(x, y, w, h), fmt, data)
    buffer.flush()
    drawable.update(x, y, w, h)


def _write_undoable(drawable: Gimp.Drawable, fmt: str, data: bytes, w: int, h: int) -> None:
    """Pixels through the shadow buffer, merged with an undo step (a reopened edit's replacement)."""
    shadow = drawable.get_shadow_buffer()
    shadow.set(Gegl.Rectangle.new(0, 0, w, h), fmt, data)
    shadow.flush()
    drawable.merge_shadow(True)
    drawable.update(0, 0, w, h)


class PreviewLayer:
    """The live preview on the canvas: a temporary layer the size of the photo layer, above it (or
    above the FFCLIP layer being reopened), locked, never the active layer: the user's tools go on
    working on what they worked on. GIMP's contract for a filter dialog holds because of how it changes:

    - its pixels are written straight into its buffer: no undo step, the image not marked changed;
    - it is added and removed with the undo frozen for those few milliseconds only (the user's own
      work meanwhile is recorded and undoable). GIMP marks an image changed for a layer added or
      removed even with the undo frozen; when the image was clean just before, nothing of the
      user's is pending and it is marked clean again, which is exact; when it was not, the mark
      stays (the image is changed anyway; docs/gimp.md tells the one trace this leaves)."""

    def __init__(self, pixels: LayerPixels, above: Gimp.Layer | None = None, cover: tuple | None = None) -> None:
        self.pixels = pixels
        self.image = pixels.image
        self.above = above or pixels.layer
        self.cover = cover  # a reopened FFCLIP layer's extent (layer-local): the preview hides it there
        self.layer: Gimp.Layer | None = None
        self.region: tuple[int, int, int, int] | None = None  # what is drawn now, layer-local
        self.content: tuple[tuple[int, int, int, int], bytes] | None = None
        self.visible = True

    def show(self, result: EditResult, visible: bool, badges: list | None = None) -> None:
        region, rgba = self._content(result)
        if badges:
            pixels = bytearray(rgba)
            draw_badges(pixels, region[2], region[3], badges, origin=region[:2])
            rgba = bytes(pixels)
        self.content, self.visible = (region, rgba), visible
        self._draw()

    def set_visible(self, visible: bool) -> None:
        """Before/after: the preview's pixels written in or cleared (a hidden layer would mark the
        image changed)."""
        if visible != self.visible and self.content is not None:
            self.visible = visible
            self._draw()

    def _content(self, result: EditResult) -> tuple[tuple[int, int, int, int], bytes]:
        new = self.pixels.new_layer(result, "layer")  # the blend mask in the alpha, the selection applied
        if self.cover is None:
            return new.region, new.layer_rgba
        return cover_with_source(self.pixels, new.region, new.layer_rgba, self.cover)

    def _draw(self) -> None:
        if self.layer is None or not self.layer.is_valid():
            self._add()
        region, rgba = self.content
        if not self.visible:
            rgba = bytes(len(rgba))
        old, self.region = self.region, region
        with self._quietly():
            self.layer.set_lock_content(False)  # GIMP stops a plug-in that writes to a locked layer
            if old is not None and old != region:
                _write(self.layer, RGBA, bytes(old[2] * old[3] * 4), old[2], old[3], old[0], old[1])
            _write(self.layer, RGBA, rgba, region[2], region[3], region[0], region[1])
            self.layer.set_lock_content(True)
        Gimp.displays_flush()

    def _add(self) -> None:
        selected = self.image.get_selected_layers()
        _, ox, oy = self.pixels.layer.get_offsets()
        layer_type = NEW_LAYER_TYPE.get(self.image.get_base_type(), Gimp.ImageType.RGBA_IMAGE)
        with self._quietly():
            # a new layer is transparent: the size of the photo layer, over it, never moved afterwards
            self.layer = Gimp.Layer.new(
                self.image,
                PREVIEW_NAME,
                self.pixels.width,
                self.pixels.height,
                layer_type,
                100.0,
                Gimp.LayerMode.NORMAL,
            )
            self.image.insert_layer(self.layer, self.above.get_parent(), self.image.get_item_position(self.above))
            self.layer.set_offsets(ox, oy)
            self.layer.set_lock_content(True)  # the user's brush cannot land on it
            self.layer.set_lock_position(True)
            if selected:
                self.image.set_selected_layers(selected)  # never the active layer
        self.region = None

    def remove(self) -> None:
        layer, self.layer, self.region, self.content = self.layer, None, None, None
        if layer is not None and layer.is_valid():
            with self._quietly():
                self.image.remove_layer(layer)
            Gimp.displays_flush()

    def close(self) -> None:
        self.remove()

    @contextlib.contextmanager
    def _quietly(self):
        """The undo frozen around the dialog's own change, and the image's clean mark kept."""
        was_clean = not self.image.is_dirty()
        self.image.undo_freeze()
        try:
            yield
        finally:
            self.image.undo_thaw()
            if was_clean and self.image.is_dirty():
                self.image.clean_all()


def cover_with_source(
    pixels: LayerPixels, region: tuple[int, int, int, int], rgba: bytes, cover: tuple[int, int, int, int]
) -> tuple[tuple[int, int, int, int], bytes]:
    """The preview over a reopened FFCLIP layer: the new edit composited over the source's own pixels,
    opaque over the old layer's extent too, so that the old edit does not show through."""
    x0, y0 = min(region[0], cover[0]), min(region[1], cover[1])
    x1 = max(region[0] + region[2], cover[0] + cover[2])
    y1 = max(region[1] + region[3], cover[1] + cover[3])
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, pixels.width), min(y1, pixels.height)
    union = (x0, y0, x1 - x0, y1 - y0)
    base = crop(pixels.rgba, pixels.width, pixels.height, union, 4)
    inner = (region[0] - x0, region[1] - y0, region[2], region[3])
    return union, composite(base, union[2], union[3], inner, rgba)
