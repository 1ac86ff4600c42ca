"""The plug-in's GIMP objects: the layer's pixels and selection in, the edited layer and the live
preview layer out. Imports GIMP's bindings, so it runs only inside GIMP (the logic it serves is
in edit.py and live.py, tested without GIMP).

Pixel conventions: layer pixels as RGBA8 rows (`R'G'B'A u8`, what GEGL converts any layer
precision and type to), selections and masks one byte per pixel (`Y u8`), layer-local coordinates.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

from ffclip.plugin.protocol import EditResult  # noqa: E402

from .edit import NewLayer, check_region, compose_result, crop  # noqa: E402

RGBA = "R'G'B'A u8"
MASK = "Y u8"
PREVIEW_NAME = "FFCLIP preview"
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


def place_result(image: Gimp.Image, source: Gimp.Layer, name: str, new: NewLayer) -> Gimp.Layer:
    """The edited layer (and its mask) above `source`, in one undo step."""
    image.undo_group_start()
    try:
        layer = _insert_layer(image, source, name, new)
        image.set_selected_layers([layer])
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layer


def _insert_layer(image: Gimp.Image, source: Gimp.Layer, name: str, new: NewLayer) -> Gimp.Layer:
    x, y, w, h = new.region
    _, ox, oy = source.get_offsets()
    layer_type = NEW_LAYER_TYPE.get(image.get_base_type(), Gimp.ImageType.RGBA_IMAGE)
    layer = Gimp.Layer.new(image, name, w, h, layer_type, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
    layer.set_offsets(ox + x, oy + y)
    _write(layer, RGBA, new.layer_rgba, w, h)
    if new.mask is not None:
        mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        _write(mask, MASK, new.mask, w, h)
    return layer


def _write(drawable: Gimp.Drawable, fmt: str, data: bytes, w: int, h: int) -> None:
    buffer = drawable.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), fmt, data)
    buffer.flush()
    drawable.update(0, 0, w, h)


class PreviewLayer:
    """The live preview: a temporary layer above the source, drawn with the image's undo frozen,
    so that neither it nor its updates ever reach the undo history. `close()` removes it and thaws
    the undo stack: the image is then exactly as before."""

    def __init__(self, pixels: LayerPixels) -> None:
        self.pixels = pixels
        self.image = pixels.image
        self.layer: Gimp.Layer | None = None
        self.region: tuple[int, int, int, int] | None = None
        self.was_clean = not self.image.is_dirty()
        self.frozen = self.image.undo_freeze()

    def show(self, result: EditResult, visible: bool) -> None:
        new = self.pixels.new_layer(result, "layer")  # the blend mask in the alpha, the selection applied
        if self.layer is not None and new.region[2:] != self.region[2:]:
            self.remove()
        if self.layer is None:
            self.layer = _insert_layer(self.image, self.pixels.layer, PREVIEW_NAME, new)
        else:
            _, ox, oy = self.pixels.layer.get_offsets()
            self.layer.set_offsets(ox + new.region[0], oy + new.region[1])
            _write(self.layer, RGBA, new.layer_rgba, new.region[2], new.region[3])
        self.region = new.region
        self.layer.set_visible(visible)
        Gimp.displays_flush()

    def set_visible(self, visible: bool) -> None:
        if self.layer is not None:
            self.layer.set_visible(visible)
            Gimp.displays_flush()

    def remove(self) -> None:
        layer, self.layer, self.region = self.layer, None, None
        if layer is not None and layer.is_valid():
            self.image.remove_layer(layer)
            Gimp.displays_flush()

    def close(self, changed: bool = False) -> None:
        """Remove the preview and give the image its undo history back. GIMP counts every layer
        added or removed as a change even with the undo frozen: an image that was saved when the
        dialog opened and that the dialog leaves unchanged (`changed` False) is marked saved again."""
        self.remove()
        if self.frozen:
            self.frozen = False
            self.image.undo_thaw()
            if self.was_clean and not changed:
                self.image.clean_all()
