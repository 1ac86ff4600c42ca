"""ffclip.app — the application layer: every `ffclip-engine` command (cli/), the doctor (doctor/),
the installer of the GIMP plug-in (install.py), running GIMP from the host (gimp_console.py) and the
batch edit of a folder through GIMP (batch_edit.py). It builds on everything below it; nothing below
imports it (the layer contract in pyproject.toml, checked by `lint-imports`)."""
