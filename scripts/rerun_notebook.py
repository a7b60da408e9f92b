"""Run a source notebook from top to bottom with full budgets, for its author.

The model answers and the prose of a notebook quote figures of a full run (test ELBOs,
variances, weights). This runs ``source/<assignment>/<assignment>.ipynb`` in a fresh kernel,
outside nbgrader (so with the budgets students get, not those of grading), and writes the
executed copy elsewhere: source notebooks are committed without outputs, and nothing here
writes into ``source/``. The text each cell printed is written next to it, one block per
cell, for reading the figures.

    .venv/bin/python scripts/rerun_notebook.py dpm2_inference --out /tmp/rerun

On a shared machine, wait for other heavy work: the notebooks' training budgets are in
seconds, so a busy CPU trains less and changes the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent


def cell_text(cell) -> str:
    """The text a code cell printed (streams, plain-text results and errors)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.data:
            if "image/png" not in out.data:
                parts.append(out.data["text/plain"] + "\n")
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for <assignment>.ipynb (executed) and <assignment>.txt")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    source = REPO / "source" / args.assignment / f"{args.assignment}.ipynb"
    if not source.is_file():
        print(f"no source notebook {source}: name an assignment of course/assignments.json",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(source, as_version=4)
    os.environ.pop("NBGRADER_EXECUTION", None)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", allow_errors=True,
                            record_timing=False,
                            resources={"metadata": {"path": str(source.parent)}})
    client.execute()
    nbformat.write(nb, args.out / f"{args.assignment}.ipynb")
    blocks = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
            text = cell_text(cell)
            if text.strip():
                blocks.append(f"--- cell {i} {grade_id}\n{text}")
    (args.out / f"{args.assignment}.txt").write_text("\n".join(blocks))
    errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.get("outputs", []))]
    print(f"{args.assignment}: {time.perf_counter() - start:.0f} s; executed copy and printed "
          f"text in {args.out}; cells with errors: {errors or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
