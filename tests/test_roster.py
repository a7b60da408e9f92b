"""``python -m course.roster``: a class roster into the gradebook, all rows or none.

Each test gets a temporary course root (a ``course/`` folder and a fresh gradebook made
with nbgrader's API), runs :func:`course.roster.main` in-process and checks its exit
code, its messages and what the gradebook holds afterwards.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook, InvalidEntry

from course import roster

REPO = Path(__file__).resolve().parent.parent
BOM = "\ufeff"


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory) -> Path:
    """A gradebook that knows one student, alice, made once: a new gradebook runs nbgrader's
    ``alembic`` command (in the interpreter's folder), which takes seconds."""
    root = tmp_path_factory.mktemp("template")
    (root / "course").mkdir()
    path = os.environ["PATH"]
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + path
    try:
        with Gradebook(_url(root)) as gb:
            gb.add_student("alice", first_name="Alice", last_name="Old", email="alice@old.org")
    finally:
        os.environ["PATH"] = path
    return root / "course" / "gradebook.db"


@pytest.fixture
def course_dir(tmp_path, gradebook) -> Path:
    """A course root with a copy of that gradebook."""
    (tmp_path / "course").mkdir()
    shutil.copy(gradebook, tmp_path / "course" / "gradebook.db")
    return tmp_path


def _url(root: Path) -> str:
    return f"sqlite:///{root / 'course' / 'gradebook.db'}"


def _students(root: Path) -> dict:
    """``{id: (first_name, last_name, email)}`` of every student in the gradebook."""
    with Gradebook(_url(root)) as gb:
        return {s.id: (s.first_name, s.last_name, s.email) for s in gb.students}


def _load(root: Path, text: str, capsys) -> tuple[int, str, str]:
    """Write ``text`` as the roster, run the command; ``(exit code, stdout, stderr)``."""
    path = root / "roster.csv"
    path.write_text(text, encoding="utf-8")
    code = roster.main([str(path), "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


GOOD = (BOM + "Student ID , First Name,Last Name ,E-mail\n"
        "  bob , Bob ,Builder, bob@example.org \n"
        "\n"
        "alice,Alice,Liddell,alice@uni.example.edu\n"
        "carol,Carol,,\n")


def test_good_file_loads_every_student_with_names(course_dir, capsys):
    """Does a roster with a BOM, a header, blank lines and padded cells load every student,
    names and e-mail included, updating the one already there?"""
    code, out, err = _load(course_dir, GOOD, capsys)
    assert code == 0, err
    assert "2 added, 1 updated" in out
    assert _students(course_dir) == {
        "alice": ("Alice", "Liddell", "alice@uni.example.edu"),
        "bob": ("Bob", "Builder", "bob@example.org"),
        "carol": ("Carol", None, None),
    }


def test_reimport_updates_without_duplicates(course_dir, capsys):
    """Does loading a corrected roster again update students instead of adding them twice,
    and leave the columns the new file lacks as they were?"""
    assert _load(course_dir, GOOD, capsys)[0] == 0
    code, out, err = _load(course_dir, "id,last_name\nbob,Marley\ndave,Brubeck\n", capsys)
    assert code == 0, err
    assert "1 added, 1 updated" in out
    students = _students(course_dir)
    assert sorted(students) == ["alice", "bob", "carol", "dave"]
    assert students["bob"] == ("Bob", "Marley", "bob@example.org")
    assert students["dave"] == (None, "Brubeck", None)


def test_file_without_header_is_positional(course_dir, capsys):
    """Without a header row, are the columns read as id, first name, last name, e-mail?"""
    code, out, err = _load(course_dir, "erin,Erin,Hunt,erin@example.org\nfrank,Frank\n", capsys)
    assert code == 0, err
    assert "2 added, 0 updated" in out
    students = _students(course_dir)
    assert students["erin"] == ("Erin", "Hunt", "erin@example.org")
    assert students["frank"] == ("Frank", None, None)


def test_unknown_columns_are_ignored_and_named(course_dir, capsys):
    """Is an extra column (an LMS export's section) ignored, and does the output say so?"""
    code, out, err = _load(course_dir, "id,section,email\ngina,B2,gina@example.org\n", capsys)
    assert code == 0, err
    assert "'section'" in err
    assert _students(course_dir)["gina"] == (None, None, "gina@example.org")


def test_an_unrecognised_header_is_named_with_the_columns_expected(course_dir, capsys):
    """A German LMS export's header (identifier, vorname, nachname, mail): is it refused as
    a header that names no known column, listing what was found and what is expected,
    instead of "'mail' is not an e-mail address"?"""
    text = "identifier,vorname,nachname,mail\nhanna,Hanna,Arendt,hanna@example.org\n"
    code, out, err = _load(course_dir, text, capsys)
    assert code == 2
    assert "line 1 looks like a header ('identifier', 'vorname', 'nachname', 'mail')" in err
    assert "id or student_id" in err and "email or e_mail" in err
    assert "not an e-mail address" not in err
    assert "hanna" not in _students(course_dir)


def test_a_semicolon_separated_export_is_read_and_said_so(course_dir, capsys):
    """A spreadsheet's ';'-separated export (decimal-comma locales): sniffed, loaded, named."""
    text = "id;first_name;last_name;email\nivan;Ivan;Ilyich;ivan@example.org\n"
    code, out, err = _load(course_dir, text, capsys)
    assert code == 0, err
    assert "read the file as ';'-separated" in err
    assert _students(course_dir)["ivan"] == ("Ivan", "Ilyich", "ivan@example.org")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_byte_order_mark_is_skipped_and_said_so(encoding, course_dir, capsys):
    """A UTF-8 file with a BOM and a spreadsheet's UTF-16 "Unicode text" both load, and the
    output names the byte-order mark."""
    path = course_dir / "roster.csv"
    path.write_text("id,first_name,email\njudit,Judit,judit@example.org\n", encoding=encoding)
    code = roster.main([str(path), "--root", str(course_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "byte-order mark" in err
    assert _students(course_dir)["judit"] == ("Judit", None, "judit@example.org")


BAD = ("id,first_name,last_name,email\n"   # line 1
       "ok1,Ok,One,ok1@example.org\n"      # line 2: good
       ",Nobody,Without-Id,n@example.org\n"  # line 3: missing id
       "a/b,Slash,Id,s@example.org\n"      # line 4: a path
       "c d,Space,Id,c@example.org\n"      # line 5: whitespace
       "ok2,Bad,Mail,not-an-address\n"     # line 6: e-mail
       '"multi\nline",x,y,\n'              # lines 7-8: a newline in the id
       "ok3,Too,Many,o@example.org,extra\n")  # line 9: a fifth field


def test_bad_rows_are_reported_by_line_and_nothing_is_written(course_dir, capsys):
    """Is every bad row reported with its line number and the reason, without a traceback,
    and is nothing written, not even the good rows?"""
    before = _students(course_dir)
    code, out, err = _load(course_dir, BAD, capsys)
    assert code == 2
    assert "Traceback" not in err
    for expected in ("line 3: the id is missing",
                     "line 4: id 'a/b' cannot be a student folder for nbgrader: it contains '/'",
                     "line 5: id 'c d' cannot be a student folder for nbgrader: it contains "
                     "whitespace",
                     "line 6: 'not-an-address' is not an e-mail address",
                     "line 7: id 'multi\\nline'",
                     "line 9: 5 fields, the header has 4"):
        assert expected in err, err
    assert "line 2" not in err
    assert "nothing was written" in err
    assert _students(course_dir) == before


@pytest.mark.parametrize("student_id", ["../x", ".hidden", "-rf", "a+b", '"a,b"', "a*", "x?",
                                        "tab\tid", "é" * 129])
def test_ids_nbgrader_cannot_use_are_refused(student_id, course_dir, capsys):
    """Is an id refused when it cannot be a folder under course/submitted/ or breaks
    nbgrader's globs, comma lists or exchange names?"""
    code, out, err = _load(course_dir, f"id\n{student_id}\n", capsys)
    assert code == 2
    assert "line 2: id" in err
    assert sorted(_students(course_dir)) == ["alice"]


@pytest.mark.parametrize("student_id", ["s1234567", "a.b-c_d", "mary@uni.example.edu", "josé",
                                        "123"])
def test_usual_ids_are_accepted(student_id, course_dir, capsys):
    """Are student numbers, dotted names, e-mail addresses and accented letters accepted?"""
    code, out, err = _load(course_dir, f"id\n{student_id}\n", capsys)
    assert code == 0, err
    assert student_id in _students(course_dir)


@pytest.mark.parametrize("text, first, second", [
    ("id\nbob\ncarol\nbob\n", 2, 4),
    ("id\nBob\ncarol\nbob\n", 2, 4),  # one folder on a case-insensitive file system
], ids=["same", "case"])
def test_duplicate_ids_are_reported_and_nothing_is_written(text, first, second, course_dir,
                                                          capsys):
    """Is an id that repeats an earlier row reported with both lines, and nothing written?"""
    code, out, err = _load(course_dir, text, capsys)
    assert code == 2
    assert f"line {second}: the id 'bob' repeats line {first}" in err
    assert sorted(_students(course_dir)) == ["alice"]


@pytest.mark.parametrize("text", ["", BOM, "\n \n\n", "id,first_name,last_name,email\n"],
                         ids=["empty", "bom", "blank", "header-only"])
def test_a_file_without_students_is_refused(text, course_dir, capsys):
    """Is a file that holds no student refused (a wrong file, most likely), writing nothing?"""
    code, out, err = _load(course_dir, text, capsys)
    assert code == 2
    assert "holds no students" in err
    assert sorted(_students(course_dir)) == ["alice"]


def test_header_without_id_column_is_refused(course_dir, capsys):
    """Does a header without an id column say which names it accepts?"""
    code, out, err = _load(course_dir, "name,email\nbob,bob@example.org\n", capsys)
    assert code == 2
    assert "the header has no id column (accepted: id, student_id)" in err


def test_database_error_undoes_this_run(course_dir, capsys, monkeypatch):
    """When the gradebook refuses a student halfway, are the students this run added removed
    again and the updated ones restored, with exit status 1 and no traceback?"""
    original = Gradebook.update_or_create_student

    def refuse_carol(self, student_id, **kwargs):
        if student_id == "carol":
            raise InvalidEntry("database is locked")
        return original(self, student_id, **kwargs)

    monkeypatch.setattr(Gradebook, "update_or_create_student", refuse_carol)
    before = _students(course_dir)
    code, out, err = _load(course_dir, GOOD, capsys)  # bob is added, alice updated, then carol
    assert code == 1
    assert "refused student 'carol' (line 5): database is locked; nothing was changed" in err
    assert "Traceback" not in err
    assert _students(course_dir) == before


def test_command_line(course_dir):
    """Does ``python -m course.roster`` load a file, and refuse a missing root with status 2?"""
    path = course_dir / "roster.csv"
    path.write_text(GOOD, encoding="utf-8")
    ran = subprocess.run([sys.executable, "-m", "course.roster", str(path), "--root",
                          str(course_dir)], cwd=REPO, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("2 added, 1 updated")
    ran = subprocess.run([sys.executable, "-m", "course.roster", str(path), "--root",
                          str(course_dir / "nowhere")], cwd=REPO, capture_output=True, text=True)
    assert ran.returncode == 2
    assert "no course/ folder" in ran.stderr and "Traceback" not in ran.stderr
