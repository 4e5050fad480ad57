"""Thin DVC stage entry points: `python -m pipeline.stages.<name>`. Each checks all of params.yaml
(see _cli.py), calls the library, writes its declared outputs and (from the tracking module) logs."""

import sys

from pipeline.stages import _guard

# Under `python -m`, this package is imported before the stage module, with sys.argv[0] == "-m":
# from here on, even an import that fails (a broken environment) ends in the guard's one line.
# Importing a stage module for any other purpose (tests) leaves the hook alone.
if sys.argv[:1] == ["-m"]:
    sys.excepthook = _guard.excepthook
