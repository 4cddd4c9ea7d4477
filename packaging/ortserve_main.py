"""The standalone bundle's entry point: `ortserve` as PyInstaller freezes it (packaging/build_bundle.py).

A spawned child (a model's runner, the first-run setup) starts the frozen executable again; freeze_support()
turns that start into the child and never returns for it, so it must run before anything else.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from ortserve.server.cli import main

    sys.exit(main())
