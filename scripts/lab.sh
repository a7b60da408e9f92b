#!/usr/bin/env bash
# JupyterLab for the course, on 127.0.0.1 only, as a normal user or as root.
# Usage: scripts/lab.sh [JUPYTER LAB OPTIONS...]   (called by `make lab`)
# Jupyter refuses to run as root unless told --allow-root; that flag is added only when the
# effective uid is 0. The server listens on the loopback interface: reach it from another
# machine through an SSH tunnel (ssh -L 8888:127.0.0.1:8888 HOST), not an open port.
set -euo pipefail
cd "$(dirname "$0")/.."

args=(--ip=127.0.0.1)
if [ "$(id -u)" -eq 0 ]; then
    args+=(--allow-root)
fi
# nbgrader's formgrader runs `alembic` from the environment when it creates a gradebook
export PATH="$PWD/.venv/bin:$PATH"
# idle OpenMP threads sleep instead of spinning: kernels next to other work keep their speed
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/jupyter lab "${args[@]}" "$@"
