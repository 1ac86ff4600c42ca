"""`ffclip-engine doctor`: the checks between GIMP's menu and the models — the GIMP side (gimp.py:
profiles, the installed copy, what GIMP registers) and the engine side (engine.py: the engine, its
token and certificate, the models, the device, the logs), each with the fix of what fails."""
