"""Face numbers drawn on the live preview, so that "Face 2" in the dialog's chooser can be found on
the canvas: a dark square with a white digit at the top-left corner of each face's box, scaled with
the face. Pixels only (RGBA8 rows), standard library only.
"""

from __future__ import annotations

# 3×5 digits, a row of three bits per line, top to bottom
_DIGITS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}
BACKGROUND = (20, 20, 20, 230)
FOREGROUND = (255, 255, 255, 255)


def draw_badges(rgba: bytearray, width: int, height: int, badges: list[tuple[int, list]], origin=(0, 0)) -> None:
    """Draw each (number, [x, y, w, h]) badge into `rgba` (width × height, whose top-left pixel is at
    `origin` in the boxes' coordinates); parts outside it are left out."""
    for number, box in badges:
        x, y, w, _ = box
        scale = max(2, int(w) // 40)  # a digit pixel: 2 px for small faces, more for large ones
        text = str(number)
        pad = scale
        badge_w = pad * 2 + len(text) * 4 * scale - scale
        badge_h = pad * 2 + 5 * scale
        left, top = int(x) - origin[0], int(y) - origin[1]
        _fill(rgba, width, height, left, top, badge_w, badge_h, BACKGROUND)
        for i, digit in enumerate(text):
            for row, bits in enumerate(_DIGITS[digit]):
                for col, bit in enumerate(bits):
                    if bit == "1":
                        px = left + pad + i * 4 * scale + col * scale
                        py = top + pad + row * scale
                        _fill(rgba, width, height, px, py, scale, scale, FOREGROUND)


def _fill(rgba: bytearray, width: int, height: int, x: int, y: int, w: int, h: int, colour: tuple) -> None:
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    run = bytes(colour) * (x1 - x0)
    for row in range(y0, y1):
        start = (row * width + x0) * 4
        rgba[start : start + len(run)] = run
