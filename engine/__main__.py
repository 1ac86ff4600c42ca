"""`python -m ffclip.engine`: the same commands as `python -m ffclip.app`, kept because the start
command saved in users' plug-in settings (`ffclip-edit.json`) names this module."""

import sys
from importlib import import_module

sys.exit(import_module("ffclip.app.cli").main())
