"""A real headless Chromium for page tests: Debian's `chromium` package, driven by Playwright for Python
with the system browser (Playwright's own browser download cannot run here).

`chromium_path()` finds it; on a Debian machine where the test runs as root (as CI does) and it is missing,
it installs it with apt-get first. Anywhere else a missing browser fails the test with what to install: it
is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# as the machine's notes say: without the background-networking flags Chromium tries hosts it cannot reach
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = next((path for name in CANDIDATES if (path := shutil.which(name))), None)
    if found is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "timeout": 900}
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=environment, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=environment, **quiet)
        found = shutil.which("chromium")
    if found is None:
        raise AssertionError(
            "the chat page test needs a Chromium: install Debian's package (apt-get install chromium) "
            "or put chromium / google-chrome on PATH"
        )
    return found
