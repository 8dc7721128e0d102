"""A headless Chromium for the teaching page's browser test: found on the system, or installed.

Debian's `chromium` package is the one CI uses (the CI machine runs as root and reaches Debian's
package mirror). Nothing else is downloaded: no playwright, no browser bundles. Standard library
only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Names the Debian, Ubuntu and upstream packages install; CHROMIUM overrides them all.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# The flags every headless run here uses: no sandbox (root in a container), no GPU, no network
# chatter, no first-run dialogs. The caller adds --user-data-dir=<a fresh temporary folder>.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
)


def find_chromium() -> Path | None:
    """The Chromium (or Chrome) executable: $CHROMIUM if set, else the first on PATH."""
    override = os.environ.get("CHROMIUM")
    if override:
        return Path(override) if Path(override).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def install_chromium(log=print) -> Path | None:
    """apt-get install Debian's chromium when running as root; None where that is not possible."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        log(f"[browser] {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            log(f"[browser] failed: {(proc.stdout + proc.stderr).strip()[-800:]}")
            return None
    return find_chromium()


def ensure_chromium(install: bool = True, log=print) -> Path | None:
    """Chromium's path: the system's, else (as root, with install=True) Debian's, else None.

    An explicit $CHROMIUM is used as given and never replaced by an installed one."""
    found = find_chromium()
    if found or not install or os.environ.get("CHROMIUM"):
        return found
    return install_chromium(log)


def why_missing() -> str:
    """One sentence for a skipped test: why there is no browser and how to get one."""
    override = os.environ.get("CHROMIUM")
    if override:
        return f"no Chromium: $CHROMIUM is {override!r}, which does not exist"
    if os.name == "posix" and os.geteuid() != 0:
        how = "not root, so it was not installed: run `sudo apt-get install -y chromium`"
    elif shutil.which("apt-get") is None:
        how = "no apt-get here: install Chromium and point $CHROMIUM at it"
    else:
        how = "`apt-get install -y chromium` failed (no network or no package mirror?)"
    return f"no Chromium found (looked for $CHROMIUM and {', '.join(CANDIDATES)}); {how}"


def version(chromium: Path) -> str:
    proc = subprocess.run([str(chromium), "--version"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() or proc.stderr.strip()


if __name__ == "__main__":
    path = ensure_chromium()
    print(f"{path}: {version(path)}" if path else why_missing())
