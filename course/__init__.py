"""The course's instructor tooling: the nbgrader pipeline, its plugins and the hidden tests."""
