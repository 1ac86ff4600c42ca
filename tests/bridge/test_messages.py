"""`scrub_paths`: what the engine sends names no file path of its machine, only a file's last name."""

from __future__ import annotations

import pytest

from ffclip.bridge.messages import scrub_paths


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("cannot open /home/john doe/models", "cannot open <models>"),
        ("failed reading /home/john doe/models/e4e.pt: truncated", "failed reading <e4e.pt>: truncated"),
        ("from /home/john doe/a.pt to /srv/my models/b.pt.", "from <a.pt> to <b.pt>."),
        ("No such file or directory: '/home/john doe/my models.pt'", "No such file or directory: '<my models.pt>'"),
        ('open "~/FFCLIP models/e4e.pt" failed', 'open "<e4e.pt>" failed'),
        (r"C:\Program Files\FFCLIP\e4e.pt is missing", "<e4e.pt> is missing"),
        (r"'C:\Users\John Doe\my file.pt'", "'<my file.pt>'"),
        ("copying /tmp/a to /tmp/b", "copying <a> to <b>"),  # words between two paths stay
        ("see https://example.com/a/b", "see https://example.com/a/b"),  # a URL is not a path here
    ],
)
def test_a_path_with_spaces_is_replaced_whole(text: str, scrubbed: str) -> None:
    assert scrub_paths(text) == scrubbed
    assert scrub_paths({"models": {"sources": [text]}}) == {"models": {"sources": [scrubbed]}}
