#!/usr/bin/env bash
# Install Debian's `chromium` (used by tests/test_browser.py) if it is not already on PATH.
# Non-interactive. Always exits 0: if chromium cannot be installed (no root, no apt-get,
# no network), it says so and the browser test skips with the same message.
set -u

if command -v chromium >/dev/null 2>&1; then
    echo "install_chromium: chromium already installed: $(command -v chromium)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: apt-get not found; install chromium by hand to run the browser test."
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_chromium: not root and no passwordless sudo; cannot install chromium."
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_chromium: installing Debian's chromium with apt-get ..."
if $SUDO apt-get update -qq \
    && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; then
    echo "install_chromium: installed $(command -v chromium) ($(chromium --version 2>/dev/null))"
else
    echo "install_chromium: apt-get could not install chromium; the browser test will skip."
fi
exit 0
