"""Load a class roster into the gradebook: ``python -m course.roster students.csv``.

The CSV file has one student per row and the columns ``id, first_name, last_name,
email``. A header row is optional:

* **with a header** the columns may come in any order; a header cell is matched without
  regard to case, surrounding spaces, or spaces and hyphens against underscores, and may
  be one of the names in :data:`COLUMNS` (``id`` or ``student_id``; ``first_name`` or
  ``given_name``; ``last_name``, ``family_name`` or ``surname``; ``email`` or ``e_mail``).
  So ``Student ID, First Name, Surname, E-mail`` is accepted. ``id`` is required; other
  columns (an LMS export's ``section``) are ignored and named in the output.
* **without one** the columns are positional: id, first name, last name, e-mail; the
  trailing ones may be left out.

The file is UTF-8, or UTF-16 with a byte-order mark (a spreadsheet's "Unicode text"); a
byte-order mark is skipped and said so. The delimiter is sniffed (``csv.Sniffer``: ``,``,
``;`` as spreadsheets write it where the decimal point is a comma, tab or ``|``) and named
when it is not a comma. A first row that names no known column but looks like a header (no
e-mail address in it, while the rows below have one) is refused with the columns expected
and found, not read as a student. Every cell is stripped of surrounding whitespace; blank
lines are skipped; an empty name or e-mail is stored as none.

Every row is checked before anything is written, and each problem is reported with its
line number: a missing id; an id that cannot be a student's folder (nbgrader keeps
``course/submitted/<id>/``, globs ids with ``--student``, splits ``student_id_exclude`` on
commas and exchange folder names on ``+``: so letters, digits, ``.``, ``_``, ``-`` and
``@`` only, starting with a letter or digit, at most 128 characters, nbgrader's limit);
a malformed e-mail address; an id that repeats an earlier row (also when the two differ
only in case: they would share a folder on macOS and Windows). Then, only if every row is
good, all students are written with nbgrader's API
(:meth:`nbgrader.api.Gradebook.update_or_create_student`): new ones are added, existing
ones updated in the columns that the file has.

nbgrader commits each student on its own, so one transaction is not on offer through its
API; instead nothing is written before the whole file has passed its checks, and on a
database error (a locked gradebook) the students this run added are removed and the ones
it updated get their previous names and e-mail back.

Exit status: 0 when loaded ("N added, M updated"), 2 for a bad file (nothing written),
1 for a database error.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["COLUMNS", "RosterError", "Student", "read_roster", "load_roster", "main"]

REPO = Path(__file__).resolve().parent.parent

#: the roster's columns, each with the header names it accepts (after normalisation)
COLUMNS = {
    "id": ("id", "student_id"),
    "first_name": ("first_name", "given_name"),
    "last_name": ("last_name", "family_name", "surname"),
    "email": ("email", "e_mail"),
}
_HEADER = {alias: column for column, aliases in COLUMNS.items() for alias in aliases}
_FIELDS = tuple(COLUMNS)
_NAMES = tuple(field for field in _FIELDS if field != "id")
_ACCEPTED = "; ".join(" or ".join(aliases) for aliases in COLUMNS.values())

#: nbgrader's limit on an id, a name or an e-mail (the gradebook's ``String(128)``)
MAX_LENGTH = 128
_ID_RULE = "use letters, digits, '.', '_', '-' and '@', starting with a letter or digit"
_ID = re.compile(r"[^\W_][\w.@-]*")
# name@domain.tld: no spaces, one @, a domain of at least two dot-separated labels
_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
_EMAIL = re.compile(rf"[^@\s]+@{_LABEL}(?:\.{_LABEL})+")


class RosterError(Exception):
    """A roster that cannot be loaded; ``problems`` holds one message per bad row."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Student:
    """One row of the roster; ``line`` is where it starts in the file (1-based)."""

    id: str
    first_name: Optional[str]
    last_name: Optional[str]
    email: Optional[str]
    line: int


def _header_name(cell: str) -> str:
    return re.sub(r"[\s-]+", "_", cell.strip().lower())


def _id_problem(student_id: str) -> Optional[str]:
    """Why ``student_id`` cannot be a student's folder for nbgrader, or None."""
    if not student_id:
        return "the id is missing"
    if len(student_id) > MAX_LENGTH:
        return f"id {student_id[:20]!r}... is {len(student_id)} characters long, " \
               f"nbgrader takes at most {MAX_LENGTH}"
    if _ID.fullmatch(student_id):
        return None
    if not _ID.match(student_id):
        return f"id {student_id!r} cannot be a student folder for nbgrader: {_ID_RULE}"
    bad = student_id[_ID.match(student_id).end()]
    what = "whitespace" if bad.isspace() else repr(bad)
    return (f"id {student_id!r} cannot be a student folder for nbgrader: it contains {what}; "
            f"{_ID_RULE}")


#: byte-order marks and the encodings they announce (a spreadsheet's "Unicode text" is UTF-16)
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"), (b"\xff\xfe", "utf-16", "UTF-16"),
         (b"\xfe\xff", "utf-16", "UTF-16"))
#: the delimiters a roster may use: a spreadsheet in a locale with decimal commas writes ';'
_DELIMITERS = ",;\t|"


def _decode(path: Path, notes: list) -> str:
    """The text of a roster file: UTF-8, or what its byte-order mark announces (noted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RosterError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise RosterError([f"{path}: is a folder, not a CSV file"]) from None
    except OSError as err:
        raise RosterError([f"{path}: cannot read it: {err.strerror}"]) from None
    encoding = "utf-8"
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            encoding = codec
            notes.append(f"skipped the byte-order mark of a {name} file (a spreadsheet's export)")
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise RosterError([f"{path}: not {encoding.upper()} text (byte {err.object[err.start]:#04x} "
                           f"at offset {err.start}); save the file as UTF-8 CSV"]) from None


def _dialect(text: str, notes: list):
    """The CSV dialect of ``text``: ``csv.Sniffer`` among :data:`_DELIMITERS`, else ','."""
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=_DELIMITERS)
    except csv.Error:
        return csv.excel
    if dialect.delimiter != ",":
        shown = {"\t": "tab"}.get(dialect.delimiter, repr(dialect.delimiter))
        notes.append(f"read the file as {shown}-separated")
    return dialect


def _read_rows(path: Path, notes: list) -> list[tuple[int, list[str]]]:
    """``[(line, stripped cells)]`` of the non-blank rows of a CSV file."""
    text = _decode(path, notes)
    reader, rows, start = csv.reader(io.StringIO(text, newline=""), _dialect(text, notes)), [], 1
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells):
                rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as err:
        raise RosterError([f"{path}: line {reader.line_num}: not valid CSV: {err}"]) from None
    return rows


def _looks_like_header(rows: list) -> bool:
    """Whether the first row names columns rather than a student: no cell of it is an
    e-mail address while a later row has one."""
    if len(rows) < 2:
        return False
    has_email = lambda cells: any(_EMAIL.fullmatch(c) for c in cells)  # noqa: E731
    return not has_email(rows[0][1]) and any(has_email(cells) for _, cells in rows[1:])


def _columns(rows: list, path: Path, notes: list) -> tuple[tuple, list]:
    """The columns of the file and its data rows: from a header row, or positional."""
    first = rows[0][1] if rows else []
    if not any(_header_name(cell) in _HEADER for cell in first):
        if _looks_like_header(rows):
            raise RosterError([
                f"{path}: line {rows[0][0]} looks like a header ({', '.join(map(repr, first))}), "
                f"but names none of the roster's columns. Expected (any case; spaces or "
                f"hyphens for underscores): {_ACCEPTED}. Rename those header cells, or delete "
                f"the header row to read the columns by position (id, first name, last name, "
                f"e-mail)"])
        return _FIELDS, rows
    line, header = rows[0]
    columns, ignored = [], []
    for cell in header:
        name = _HEADER.get(_header_name(cell))
        if name is not None and name in columns:
            raise RosterError([f"{path}: line {line}: the header names the column {name!r} twice"])
        columns.append(name)
        if name is None and cell:
            ignored.append(cell)
    if "id" not in columns:
        raise RosterError([f"{path}: line {line}: the header has no id column (accepted: "
                           f"{', '.join(COLUMNS['id'])}); found {', '.join(map(repr, header))}"])
    if ignored:
        notes.append(f"ignored the column(s) {', '.join(map(repr, ignored))} "
                     f"(the roster's columns are {_ACCEPTED})")
    return tuple(columns), rows[1:]


def read_roster(path: Path, notes: Optional[list] = None) -> tuple[list[Student], tuple]:
    """Read and check a roster file; write nothing.

    Args:
        path: the CSV file (see the module docstring for its columns).
        notes: a list that receives remarks that are not errors (ignored columns).

    Returns:
        The students in file order, and the columns other than ``id`` that the file has
        (an existing student is updated only in these).

    Raises:
        RosterError: with one message per problem, each naming its line, when any row is
            bad or the file holds no student.
    """
    path = Path(path)
    notes = [] if notes is None else notes
    rows = _read_rows(path, notes)
    columns, data = _columns(rows, path, notes)
    has_header = len(data) < len(rows)
    present = set()
    students, problems, seen = [], [], {}
    for line, cells in data:
        if len(cells) > len(columns) and any(cells[len(columns):]):
            expected = (f"the header has {len(columns)}" if has_header else
                        "without a header row the columns are " + ", ".join(_FIELDS))
            problems.append(f"line {line}: {len(cells)} fields, {expected}")
            continue
        row = {name: cell or None for name, cell in zip(columns, cells) if name is not None}
        present.update(name for name in row if name != "id")
        student_id = row.get("id") or ""
        problem = _id_problem(student_id)
        if problem:
            problems.append(f"line {line}: {problem}")
        elif student_id.casefold() in seen:
            first_line, first_id = seen[student_id.casefold()]
            same = "" if first_id == student_id else \
                f" ({first_id!r}: ids that differ only in case share a folder on macOS and Windows)"
            problems.append(f"line {line}: the id {student_id!r} repeats line {first_line}{same}")
        else:
            seen[student_id.casefold()] = (line, student_id)
        email = row.get("email")
        if email is not None and not _EMAIL.fullmatch(email):
            problems.append(f"line {line}: {email!r} is not an e-mail address (name@domain.org)")
        for name in _NAMES:
            if row.get(name) is not None and len(row[name]) > MAX_LENGTH:
                problems.append(f"line {line}: the {name} is longer than {MAX_LENGTH} "
                                f"characters, nbgrader's limit")
        students.append(Student(student_id, row.get("first_name"), row.get("last_name"), email,
                                line))
    if problems:
        raise RosterError([f"{path}: {problem}" for problem in problems])
    if not students:
        raise RosterError([f"{path}: holds no students"])
    return students, tuple(name for name in _NAMES if name in present)


def load_roster(students: list[Student], columns: tuple, db_url: str) -> tuple[int, int]:
    """Add or update every student in the gradebook at ``db_url``; all or nothing.

    Args:
        students: checked rows, from :func:`read_roster`.
        columns: the fields to write (``first_name``, ``last_name``, ``email``).
        db_url: the gradebook, e.g. ``sqlite:///course/gradebook.db``.

    Returns:
        ``(added, updated)``: how many students were new, how many already there.

    Raises:
        RuntimeError: on a database error, after undoing what this call wrote.
    """
    from nbgrader.api import Gradebook, InvalidEntry, MissingEntry
    from sqlalchemy.exc import SQLAlchemyError

    added, previous = [], {}
    try:
        gb = Gradebook(db_url)
    except (SQLAlchemyError, OSError, subprocess.CalledProcessError) as err:
        # a new gradebook asks nbgrader's ``alembic`` command (on the PATH) for its version
        raise RuntimeError(f"cannot open the gradebook {db_url}: {err}") from None
    with gb:
        try:
            for student in students:
                try:
                    old = gb.find_student(student.id)
                    previous[student.id] = {name: getattr(old, name) for name in columns}
                except MissingEntry:
                    pass
                gb.update_or_create_student(
                    student.id, **{name: getattr(student, name) for name in columns})
                if student.id not in previous:
                    added.append(student.id)
        except (InvalidEntry, SQLAlchemyError) as err:
            undone = _undo(gb, added, previous)
            raise RuntimeError(f"the gradebook refused student {student.id!r} "
                               f"(line {student.line}): {err}; {undone}") from None
    return len(added), len(previous)


def _undo(gb, added: list, previous: dict) -> str:
    """Remove the students in ``added``, restore the fields in ``previous``; say how it went."""
    from nbgrader.api import InvalidEntry
    from sqlalchemy.exc import SQLAlchemyError

    left = []
    gb.db.rollback()
    for student_id in added:
        try:
            gb.remove_student(student_id)
        except (InvalidEntry, SQLAlchemyError):
            gb.db.rollback()
            left.append(student_id)
    for student_id, fields in previous.items():
        try:
            gb.update_or_create_student(student_id, **fields)
        except (InvalidEntry, SQLAlchemyError):
            gb.db.rollback()
            left.append(student_id)
    if left:
        return f"could not undo the changes to {', '.join(left)}: check them in the formgrader"
    return "nothing was changed"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.roster",
        description="Load a class roster (CSV: id, first_name, last_name, email) into the "
                    "gradebook; all rows are checked first, and nothing is written unless "
                    "every row is good.",
        epilog="Header names accepted (any case; spaces or hyphens for underscores): "
               + "; ".join(" or ".join(aliases) for aliases in COLUMNS.values())
               + ". Without a header row the columns are positional in that order.")
    parser.add_argument("csv", type=Path, help="the roster, a UTF-8 CSV file")
    parser.add_argument("--root", type=Path,
                        default=Path(os.environ.get("DPM_COURSE_ROOT") or REPO),
                        help="the course root; the gradebook is ROOT/course/gradebook.db "
                             "(default: $DPM_COURSE_ROOT, else this repository)")
    args = parser.parse_args(argv)
    course = args.root / "course"
    notes = []
    try:
        if not course.is_dir():
            raise RosterError([f"{args.root}: no course/ folder here; is it the course root?"])
        students, columns = read_roster(args.csv, notes)
    except RosterError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print("course.roster: nothing was written; fix the file and run again", file=sys.stderr)
        return 2
    for note in notes:
        print(f"course.roster: {note}", file=sys.stderr)
    db = course / "gradebook.db"
    if shutil.which("alembic") is None:  # nbgrader runs it to create a gradebook
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    try:
        added, updated = load_roster(students, columns, f"sqlite:///{db.resolve()}")
    except RuntimeError as err:
        print(f"course.roster: {err}", file=sys.stderr)
        return 1
    print(f"{added} added, {updated} updated ({db})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
