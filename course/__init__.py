"""The course's instructor tools: nbgrader plugins, the sandboxed class grader, the hidden
tests as code (``course.checks``, written into ``source/`` by ``course.sync_checks``) and
the pipeline.

``python -m course.grade`` grades a whole class (see :mod:`course.grade`); the state of a
course (gradebook, submissions, feedback) lives in this folder too, ignored by git.
"""
