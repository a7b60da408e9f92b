"""The course's instructor tools: nbgrader plugins, the sandboxed class grader, the judges
that reach every verdict outside the kernel (``course.judges``; ``course.sync_checks``
writes the one-line hidden region of each graded cell into ``source/``) and the pipeline.

``python -m course.grade`` grades a whole class (see :mod:`course.grade`); the state of a
course (gradebook, submissions, feedback) lives in this folder too, ignored by git.
"""
