"""Face numbers on the preview (gimp/badges.py): where they go, what they look like, and that
nothing outside the pixels is touched."""

from __future__ import annotations

from ffclip.gimp.badges import BACKGROUND, FOREGROUND, draw_badges


def pixel(rgba: bytearray, width: int, x: int, y: int) -> tuple:
    i = (y * width + x) * 4
    return tuple(rgba[i : i + 4])


def test_a_badge_sits_at_the_faces_top_left_corner_with_its_digit():
    width, height = 200, 120
    rgba = bytearray(width * height * 4)
    draw_badges(rgba, width, height, [(2, [50, 30, 80, 80])])  # a face 80 px wide: 2-px digit pixels
    assert pixel(rgba, width, 50, 30) == BACKGROUND  # the badge's corner
    assert pixel(rgba, width, 49, 30) == (0, 0, 0, 0) and pixel(rgba, width, 50, 29) == (0, 0, 0, 0)
    # "2": its top bar is lit from the badge's padding on
    assert pixel(rgba, width, 52, 32) == FOREGROUND and pixel(rgba, width, 56, 32) == FOREGROUND
    # its second row lights only the right column ("001")
    assert pixel(rgba, width, 52, 34) == BACKGROUND and pixel(rgba, width, 56, 34) == FOREGROUND


def test_badges_are_clipped_to_the_pixels_they_are_drawn_into():
    width, height = 40, 30
    rgba = bytearray(width * height * 4)
    draw_badges(rgba, width, height, [(1, [-5, -5, 400, 400]), (12, [35, 25, 60, 60])])  # large, and off the edge
    assert len(rgba) == width * height * 4
    assert pixel(rgba, width, 0, 0) != (0, 0, 0, 0) and pixel(rgba, width, 39, 29) != (0, 0, 0, 0)


def test_an_origin_moves_the_boxes_into_a_crops_coordinates():
    width, height = 60, 60
    rgba = bytearray(width * height * 4)
    draw_badges(rgba, width, height, [(3, [110, 210, 40, 40])], origin=(100, 200))
    assert pixel(rgba, width, 10, 10) == BACKGROUND and pixel(rgba, width, 9, 10) == (0, 0, 0, 0)
