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

# 3. Bubblewrap, the sandbox that grading runs student code in (course/sandbox.py).
if ! command -v bwrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's bubblewrap (the grading sandbox)"
        { apt-get update -qq >/dev/null; apt-get install -y -qq bubblewrap >/dev/null; } \
            || echo "setup: could not install bubblewrap; grading will refuse to run student code"
    else
        echo "setup: bwrap not found: install bubblewrap (e.g. sudo apt-get install bubblewrap) to grade"
    fi
fi

# 4. MathJax for the feedback pages, which carry a copy so that formulas render offline
#    (course/feedback.py); without it the pages load MathJax from a CDN.
if [ ! -f /usr/share/javascript/mathjax/MathJax.js ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's libjs-mathjax (formulas in the feedback pages)"
        { apt-get update -qq >/dev/null; apt-get install -y -qq libjs-mathjax >/dev/null; } \
            || echo "setup: could not install libjs-mathjax; feedback pages will load MathJax from a CDN"
    else
        echo "setup: MathJax not found: install libjs-mathjax (e.g. sudo apt-get install libjs-mathjax) for offline formulas in feedback"
    fi
fi

# 5. Chromium for the widgets' browser test (the test skips itself without it).
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's chromium for the browser test"
        { apt-get update -qq >/dev/null; apt-get install -y -qq chromium >/dev/null; } \
            || echo "setup: could not install chromium; the browser test will be skipped"
    else
        echo "setup: /usr/bin/chromium not found; the browser test will be skipped"
    fi
fi
