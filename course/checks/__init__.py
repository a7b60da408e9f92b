"""The hidden tests of the course's notebooks, as importable, testable code.

``course/checks/<assignment>.py`` holds one ``check_<name>(ns)`` per graded test cell of
``source/<assignment>/<assignment>.ipynb`` (grade id ``<name>-tests``, dashes as underscores)
and a registry ``CHECKS`` from grade id to check, in notebook order. A check reads the
student's objects from ``ns``, the notebook's global namespace, and raises
``AssertionError`` with a message that names the likely mistake. Helpers that two checks
or more use live once, in :mod:`course.checks._common`.

``python -m course.sync_checks`` writes each check, with the helpers and imports it needs,
into the hidden region of its cell (nbgrader runs the notebook in a sandbox that cannot
import this package), so the modules here are the one place to edit the hidden tests.
"""
