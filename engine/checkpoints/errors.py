"""Errors raised while reading checkpoint files."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why, in words meant for the user."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle references a callable outside the allow-list; nothing was executed."""
