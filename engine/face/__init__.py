"""Faces in photos: detection, FFHQ alignment and paste-back."""
