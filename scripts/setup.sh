#!/usr/bin/env bash
# Set up everything the course needs, idempotently: a virtual environment in .venv with the
# package and its pinned dependencies, the FashionMNIST files, bubblewrap (the sandbox) and
# MathJax (formulas in the feedback pages).
# Usage: scripts/setup.sh            (called by `make main`)
#        scripts/setup.sh --browser  (called by `make test`: also Debian's chromium for the
#                                     browser test of the widgets, when it can be installed)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed

# 1. Python environment: reinstall only when pyproject.toml changed.
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "setup: installing the package and its dependencies (torch is large; first time only)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$STAMP"
fi

# 2. Data: $DPM_DATA, ./data, Debian's package, then torchvision's download at run time.
have_data() {
    for d in "${DPM_DATA:-}" ./data ./data/FashionMNIST/raw /usr/share/datasets/fashion-mnist; do
        [ -n "$d" ] && ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1 && return 0
    done
    return 1
}
if ! have_data; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
            || echo "setup: apt-get could not install dataset-fashion-mnist; torchvision will try to download"
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's dataset-fashion-mnist with sudo"
        sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null \
            || echo "setup: could not install dataset-fashion-mnist; torchvision will try to download"
    else
        echo "setup: FashionMNIST not found; torchvision will download it into ./data on first use"
    fi
fi

# Install a Debian package as root (apt-get), or say what to install.
# Usage: apt_install PACKAGE "what it is for" "what happens without it"
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's $1 ($2)"
        { apt-get update -qq >/dev/null; apt-get install -y -qq "$1" >/dev/null; } \
            || echo "setup: could not install $1; $3"
    else
        echo "setup: $1 is missing: install it (e.g. sudo apt-get install $1) for $2; $3"
    fi
}

# 3. Bubblewrap, the sandbox that grading runs student code in (course/sandbox.py).
command -v bwrap >/dev/null \
    || apt_install bubblewrap "the grading sandbox" "grading will refuse to run student code"

# 4. MathJax for the feedback pages, which carry a copy so that formulas render offline
#    (course/feedback.py); without it the pages load MathJax from a CDN.
[ -f /usr/share/javascript/mathjax/MathJax.js ] \
    || apt_install libjs-mathjax "formulas in the feedback pages" \
                   "feedback pages will load MathJax from a CDN"

# 5. Chromium for the widgets' browser test (the test skips itself without it).
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
    apt_install chromium "the browser test" "the browser test will be skipped"
fi
