"""FFCLIP Edit engine: models, checkpoints, the photo pipeline, training and evaluation."""

__version__ = "0.1.0"
