"""The GIMP 3 side: the plug-in entry (ffclip-edit/ffclip-edit.py, shipped as package data) and batch_edit."""
