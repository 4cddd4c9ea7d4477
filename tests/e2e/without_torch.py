"""Run the `ortserve` command as if torch, transformers and sentence-transformers were not installed.

`python tests/e2e/without_torch.py ARGS...` is `ortserve ARGS...` with an import hook that makes those
packages (and what they pull in: optimum, onnxscript's torch side) fail to import, as in a serve-only
install. The hook is installed when this file is imported, so the processes `serve` spawns (its model
runners re-import this file as their `__mp_main__`) run without them too. Each blocked attempt is
logged to stderr, so a test can tell an import that was tried and handled from one never tried.
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("torch", "transformers", "sentence_transformers", "optimum", "torchvision")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            print(f"without_torch: blocked import of {fullname}", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named '{fullname}' (blocked: a serve-only install)", name=fullname)
        return None


if not any(isinstance(finder, _Blocker) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Blocker())

if __name__ == "__main__":
    from ortserve.server.cli import main

    sys.exit(main(sys.argv[1:]))
