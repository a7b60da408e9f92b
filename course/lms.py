"""Submissions downloaded from an LMS, collected by ``nbgrader zip_collect``.

``nbgrader_config.py`` makes :class:`LMSCollector` the collector of nbgrader's
``ZipCollectApp``: nbgrader unpacks every zip in ``course/downloaded/<assignment>/archive/``
into ``.../extracted/`` and asks the collector, file by file, whose notebook it is and which
notebook of the assignment; nbgrader then copies it to
``course/submitted/<student id>/<assignment>/<notebook>``. The collector recognises the
names that three LMSs give to a bulk download (checked against their source code or real
downloads, as noted):

* **Canvas** ("Download Submissions"): ``<lastfirst>[_LATE]_<user id>_<file id>_<file name>``,
  one flat folder. Canvas's ``lib/content_zipper.rb`` (instructure/canvas-lms) writes the
  student's ``sortable_name`` ("Lovelace, Ada") downcased, then ``LATE`` for a late
  submission and the Canvas user id, and strips every character that is not a letter, digit
  or ``_`` (so ``lovelaceada``; accents are kept); the second number is the id of the
  uploaded *file* (an attachment id, growing with every upload), not of the submission.
  A student who uploads a file whose name they used before gets ``name-1.ipynb``,
  ``name-2.ipynb`` (Canvas's ``Attachment.make_unique_filename``; a UUID after seven).
  Under anonymous grading the name and user id are replaced by ``anon_<anonymous id>``.
* **Moodle** ("Download all submissions"): a folder per student and plugin,
  ``<Full Name>_<participant id>_assignsubmission_file_/<file name>`` (the default since
  Moodle 3.1; the older flat layout puts the file name right after the last ``_``).
  ``mod/assign/locallib.php`` writes ``fullname()`` ("First Last", or "Last First" where
  the site's ``fullnamedisplay`` says so) with ``_`` turned into spaces, then
  ``clean_filename`` removes ``& < > " ` | ' : \\ /``. The participant id is Moodle's own
  number for that student in that assignment, not a user id. Under blind marking the name is
  "Participant".
* **Blackboard Learn** ("Assignment File Download"):
  ``<assignment>_<username>_attempt_<YYYY-MM-DD-HH-MM-SS>_<file name>``, plus a ``.txt``
  receipt per attempt without a file name. Verified on real downloads quoted in public code
  (``Homework 1_msf5072_attempt_2019-01-31-02-51-33.txt``) and on BBGradebookOrganiser
  (vangef), which takes the username as the last ``_`` field before ``_attempt_``; it is the
  example of nbgrader's own ``FileNameCollectorPlugin.named_regexp`` help.

Canvas and Moodle carry names, not ids: a name is matched to the gradebook's students
(loaded by ``python -m course.roster``) with case, accents, spaces, hyphens and punctuation
ignored (:func:`name_key`); Blackboard's username is the student id. A file whose person
matches no student, or several, is skipped with a line that names the file and what to do,
never guessed. The file name maps back to a notebook of the assignment (Canvas's ``-N``,
a browser's ``(1)``, case, spaces for ``_``). When one student has several files for the
same notebook, Canvas's latest upload (the largest file id) is kept; Blackboard's attempts
carry their time, which goes to nbgrader as the submission's ``timestamp`` (nbgrader keeps
the newest and writes ``timestamp.txt``, used for late penalties); files that nothing
orders are all skipped and named.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

from nbgrader.plugins import FileNameCollectorPlugin
from nbgrader.utils import find_all_notebooks
from traitlets import Enum, TraitError, Unicode, validate

__all__ = ["Upload", "parse_upload", "name_key", "Roster", "notebook_for", "LMSCollector"]

#: Blackboard: <assignment>_<username>_attempt_<time>_<file name>
_BLACKBOARD = re.compile(r"(?P<prefix>.+)_attempt_(?P<time>\d{4}(?:-\d\d){5})_(?P<file>.+)")
#: Moodle's folder per student (a component of the path), and its older flat file name
_MOODLE_FOLDER = re.compile(r"(?P<name>[^_]+)_(?P<participant>\d+)_assignsubmission_file_")
_MOODLE_FLAT = re.compile(_MOODLE_FOLDER.pattern + r"(?P<file>.+)")
#: Canvas: <lastfirst>[_LATE]_<user id>_<file id>_<file name>; anonymous: [LATE_]anon_<id>_...
_CANVAS = re.compile(r"(?P<name>.+?)(?P<late>_LATE)?_(?P<user>\d+)_(?P<order>\d+)_(?P<file>.+)")
_CANVAS_ANONYMOUS = re.compile(r"(?:LATE_)?anon_[0-9A-Za-z]+_\d+_.+")
#: what an LMS or a browser appends to a repeated file name: -1, -<uuid>, " (1)"
_COPY = re.compile(r"(?:-\d+|-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}| ?\(\d+\))$")
#: files that an archiver adds and nobody submitted (macOS resource forks)
_JUNK = re.compile(r"__MACOSX|\..*")


@dataclass(frozen=True)
class Upload:
    """What an LMS's file name says about one uploaded file.

    ``person`` is the name or username as the LMS wrote it; ``file_name`` the student's own
    file name; ``order`` Canvas's file id (later uploads have larger ones); ``timestamp``
    Blackboard's attempt time as ``YYYY-MM-DD HH:MM:SS`` (the LMS's clock).
    """

    lms: str
    person: str
    file_name: str
    order: Optional[int] = None
    timestamp: Optional[str] = None
    late: bool = False
    anonymous: bool = False


def _parse_component(part: str, file_name: str, is_file: bool) -> Optional[Upload]:
    """The upload that one path component names, if any; ``file_name`` is the file's own."""
    if not is_file and (m := _MOODLE_FOLDER.fullmatch(part)):
        return Upload("Moodle", m["name"].strip(), file_name)
    if m := _BLACKBOARD.fullmatch(part):
        date, hours = m["time"][:10], m["time"][11:].replace("-", ":")
        return Upload("Blackboard", m["prefix"], m["file"] if is_file else file_name,
                      timestamp=f"{date} {hours}")
    if m := _MOODLE_FLAT.fullmatch(part):
        return Upload("Moodle", m["name"].strip(), m["file"] if is_file else file_name)
    if _CANVAS_ANONYMOUS.fullmatch(part):
        return Upload("Canvas", "", file_name, anonymous=True)
    if m := _CANVAS.fullmatch(part):
        return Upload("Canvas", m["name"], m["file"] if is_file else file_name,
                      order=int(m["order"]), late=bool(m["late"]))
    return None


def parse_upload(relpath: str) -> Optional[Upload]:
    """Read the LMS's naming from a path relative to the extracted folder, or None.

    The outermost component that an LMS named wins: below it the names are the student's
    own (a zip that a student handed in is unpacked by nbgrader into a folder named after
    it). The notebook's name is always the file's own, last component.

    >>> parse_upload("subs/lovelaceada_LATE_1001_5007_vae_basics-1.ipynb").order
    5007
    """
    parts = relpath.replace(os.sep, "/").split("/")
    for i, part in enumerate(parts):
        upload = _parse_component(part, parts[-1], is_file=i == len(parts) - 1)
        if upload is not None:
            return upload
    return None


def name_key(name: str) -> str:
    """A person's name with case, accents, spaces, hyphens and punctuation removed.

    >>> name_key("García-Pérez, José") == name_key("garcíapérezjosé") == "garciaperezjose"
    True
    """
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(c for c in decomposed if c.isalnum())


class Roster:
    """The gradebook's students, looked up by the names and usernames that LMSs write.

    Args:
        students: ``(id, first_name, last_name)`` of each student (names may be None).
        moodle_order: ``"first last"`` or ``"last first"``, Moodle's ``fullnamedisplay``.
    """

    def __init__(self, students: Iterable[tuple], moodle_order: str = "first last"):
        if moodle_order not in ("first last", "last first"):
            raise ValueError(f"moodle_order must be 'first last' or 'last first', "
                             f"got {moodle_order!r}")
        self.ids = {}
        self._names = {"Canvas": defaultdict(list), "Moodle": defaultdict(list)}
        for student_id, first, last in students:
            self.ids[student_id.casefold()] = student_id
            first, last = first or "", last or ""
            if not (first or last):
                continue
            moodle = first + last if moodle_order == "first last" else last + first
            self._names["Canvas"][name_key(last + first)].append(student_id)
            self._names["Moodle"][name_key(moodle)].append(student_id)

    def __len__(self) -> int:
        return len(self.ids)

    def match(self, upload: Upload) -> list[str]:
        """The ids of the students that ``upload``'s person can be (sorted)."""
        if upload.lms == "Blackboard":
            # "<assignment>_<username>": either may hold "_", so try every split
            fields = upload.person.split("_")
            tails = ("_".join(fields[i:]).casefold() for i in range(1, len(fields)))
            return sorted({self.ids[t] for t in tails if t in self.ids})
        return sorted(set(self._names[upload.lms].get(name_key(upload.person), ())))


def _file_key(stem: str) -> str:
    """A file name's stem with case ignored and runs of spaces, ``_`` and ``-`` as one ``_``."""
    return re.sub(r"[\s_-]+", "_", stem.casefold())


def notebook_for(file_name: str, notebooks: list[str]) -> Optional[str]:
    """The notebook of the assignment that a handed-in file name stands for, or None.

    The exact name, else the one whose name equals it without a copy suffix (``-1``,
    ``(1)``) and with case, spaces and hyphens ignored; None when that is not exactly one.

    >>> notebook_for("VAE basics (1).ipynb", ["vae_basics.ipynb", "extra.ipynb"])
    'vae_basics.ipynb'
    """
    if file_name in notebooks:
        return file_name
    stem, ext = os.path.splitext(file_name)
    wanted = (_file_key(_COPY.sub("", stem)), ext)
    found = [nb for nb in notebooks
             if (_file_key(os.path.splitext(nb)[0]), os.path.splitext(nb)[1]) == wanted]
    return found[0] if len(found) == 1 else None


@dataclass
class _Candidate:
    path: str
    upload: Upload
    student: str
    notebook: str


class LMSCollector(FileNameCollectorPlugin):
    """nbgrader's file-name collector for Canvas, Moodle and Blackboard downloads.

    On its first file it reads the whole extracted folder and the gradebook's students once,
    and decides for every file: whose, which notebook, or why it is skipped. ``collect``
    then returns nbgrader's ``{student_id, file_id[, timestamp]}`` or None after a warning.
    """

    moodle_name_order = Enum(
        ["first last", "last first"], default_value="first last",
        help="How Moodle writes a full name: the site's fullnamedisplay setting.").tag(config=True)
    timezone = Unicode(
        "UTC", help="The time zone of the LMS's clock, for the attempt times in Blackboard's "
                    "file names (an IANA name such as Europe/Amsterdam).").tag(config=True)

    @validate("timezone")
    def _known_zone(self, proposal):
        from dateutil.tz import gettz

        if gettz(proposal["value"]) is None:
            raise TraitError(f"LMSCollector.timezone must be a time zone such as UTC or "
                             f"Europe/Amsterdam, got {proposal['value']!r}")
        return proposal["value"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._decisions: Optional[dict] = None

    def collect(self, submitted_file: str) -> Optional[dict]:
        """``{student_id, file_id[, timestamp]}`` for ``submitted_file``, or None to skip it."""
        if os.path.splitext(submitted_file)[1] not in self.valid_ext:
            return None
        if self._decisions is None:
            self._decisions = self._decide(self._extracted_files())
        info, message = self._decisions.get(submitted_file) or \
            self._decide([submitted_file])[submitted_file]
        if message:
            self.log.warning(message)
        return info

    # -- what nbgrader knows: folders, notebooks, students --------------------------------

    @property
    def _coursedir(self):
        return self.parent.coursedir

    def _extracted_root(self) -> str:
        """The folder nbgrader unpacked into: ``course/downloaded/<assignment>/extracted``."""
        app, cd = self.parent, self._coursedir
        # what nbgrader's ZipCollectApp._format_collect_path builds, from its public settings
        return os.path.join(cd.root, app.collect_directory_structure).format(
            downloaded=app.downloaded_directory, assignment_id=cd.assignment_id,
            collect_step=app.extracted_directory)

    def _extracted_files(self) -> list[str]:
        """Every file that nbgrader will offer to :meth:`collect`."""
        return [os.path.join(folder, name) for folder, _, names in os.walk(self._extracted_root())
                for name in names]

    def _notebooks(self) -> list[str]:
        """The assignment's notebooks: as released (what nbgrader checks), else the source."""
        cd = self._coursedir
        for step in (cd.release_directory, cd.source_directory):
            notebooks = find_all_notebooks(cd.format_path(step, ".", cd.assignment_id))
            if notebooks:
                return notebooks
        return []

    def _roster(self) -> Roster:
        from nbgrader.api import Gradebook
        from sqlalchemy.engine import make_url

        url = make_url(self._coursedir.db_url)
        if url.drivername.startswith("sqlite") and not os.path.exists(url.database or ""):
            return Roster([], self.moodle_name_order)  # opening it would create an empty one
        with Gradebook(self._coursedir.db_url) as gb:
            students = [(s.id, s.first_name, s.last_name) for s in gb.students]
        return Roster(students, self.moodle_name_order)

    def _show(self, path: str) -> str:
        """``path`` as the instructor sees it: relative to the course root."""
        return os.path.relpath(path, self._coursedir.root)

    def _target(self, student: str, notebook: str = "<notebook>") -> str:
        """Where nbgrader keeps ``student``'s ``notebook`` of this assignment."""
        cd = self._coursedir
        return self._show(os.path.join(
            cd.format_path(cd.submitted_directory, student, cd.assignment_id), notebook))

    # -- deciding --------------------------------------------------------------------------

    def _decide(self, paths: list[str]) -> dict:
        """``{path: (info or None, warning or None)}`` for every notebook file in ``paths``."""
        root = os.path.normpath(self._extracted_root())
        assignment = self._coursedir.assignment_id
        roster, notebooks = self._roster(), self._notebooks()
        decisions, candidates = {}, defaultdict(list)
        for path in paths:
            if os.path.splitext(path)[1] not in self.valid_ext:
                continue
            inside = os.path.commonpath([root, os.path.abspath(path)]) == root
            rel = os.path.relpath(path, root) if inside else os.path.basename(path)
            if any(_JUNK.fullmatch(part) for part in rel.split(os.sep)):
                decisions[path] = (None, None)
                continue
            upload = parse_upload(rel)
            ids = roster.match(upload) if upload and not upload.anonymous else []
            notebook = upload and (notebook_for(upload.file_name, notebooks) if notebooks
                                   else upload.file_name)
            if upload is None:
                why = (f"not named as Canvas, Moodle or Blackboard name their downloads. If it "
                       f"is a submission, copy it by hand to {self._target('<student id>')}")
            elif upload.anonymous:
                why = (f"Canvas hides the student (anonymous grading). Download the submissions "
                       f"with anonymous grading off, or copy it by hand to "
                       f"{self._target('<student id>')}")
            elif len(ids) != 1:
                why = self._unmatched(upload, ids, len(roster), notebook or "<notebook>")
            elif notebook is None:
                why = (f"{upload.file_name!r} is not a notebook of {assignment} "
                       f"({', '.join(notebooks)}). If it is one, copy it by hand to "
                       f"{self._target(ids[0])}")
            else:
                candidates[ids[0], notebook].append(_Candidate(path, upload, ids[0], notebook))
                continue
            decisions[path] = (None, f"Skipped {self._show(path)}: {why}")
        for group in candidates.values():
            decisions.update(self._choose(group))
        return decisions

    def _unmatched(self, upload: Upload, ids: list[str], size: int, notebook: str) -> str:
        """Why a file's person is no single student, and what to do about it."""
        if upload.lms == "Blackboard":
            who = f"username at the end of {upload.person!r} (Blackboard's <assignment>_<username>)"
        else:
            how = {"Canvas": "Canvas writes last name then first name",
                   "Moodle": f"Moodle's full name, {self.moodle_name_order}"}[upload.lms]
            who = f"name {upload.person!r} ({how})"
        if ids:
            return (f"the {who} fits {len(ids)} students in the gradebook ({', '.join(ids)}); "
                    f"not guessed. Copy the file by hand to "
                    f"{self._target('<one of them>', notebook)}")
        if not size:
            return (f"the gradebook has no students to match the {who}. Load the roster "
                    f"first: python -m course.roster students.csv")
        hint = (" (Moodle writes 'Participant' under blind marking: reveal identities before "
                "downloading)") if upload.person == "Participant" else ""
        return (f"no student in the gradebook has the {who}{hint}. Add the student to the "
                f"roster (python -m course.roster students.csv) as the LMS spells them, or copy "
                f"the file by hand to {self._target('<student id>', notebook)}")

    def _info(self, c: _Candidate) -> tuple[dict, Optional[str]]:
        """nbgrader's collected data for a kept file, and a note when Canvas says it is late."""
        info = dict(student_id=c.student, file_id=c.notebook)
        if c.upload.timestamp:
            # "YYYY-MM-DD HH:MM:SS <zone>": nbgrader's parse_utc reads the raw
            # "YYYY-MM-DD-HH-MM-SS" as a date with a UTC offset (2016-01-30-15-30-10 becomes
            # 2016-01-31 01:00), so the time is rewritten first
            info["timestamp"] = f"{c.upload.timestamp} {self.timezone}"
        note = None
        if c.upload.late:
            note = (f"{self._show(c.path)}: Canvas marks it LATE; its file name carries no time, "
                    f"so nbgrader records none (see the time in Canvas)")
        return info, note

    def _choose(self, group: list[_Candidate]) -> dict:
        """The decisions for the files of one student and one notebook."""
        if len(group) == 1 or all(c.upload.timestamp for c in group):
            # one file, or Blackboard's attempts: nbgrader keeps the newest by its timestamp
            return {c.path: self._info(c) for c in group}
        if all(c.upload.order is not None for c in group):
            latest = max(group, key=lambda c: (c.upload.order, c.path))
            decisions = {c.path: (None, f"Skipped {self._show(c.path)}: an upload of "
                                        f"{c.student}'s {c.notebook} older than "
                                        f"{self._show(latest.path)} (Canvas's file ids grow "
                                        f"with each upload)")
                         for c in group if c is not latest}
            decisions[latest.path] = self._info(latest)
            return decisions
        names = ", ".join(self._show(c.path) for c in group)
        return {c.path: (None, f"Skipped {self._show(c.path)}: one of {len(group)} files for "
                               f"{c.student}'s {c.notebook} ({names}), and the LMS gives nothing "
                               f"to order them by; not guessed. Copy the right one by hand to "
                               f"{self._target(c.student, c.notebook)}")
                for c in group}
