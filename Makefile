# The two commands of the README, plus helpers. Each sets up what it needs (scripts/setup.sh) first.
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# OpenMP threads sleep while they wait instead of spinning: on a busy machine spinning threads
# slowed training down 50-fold (dpm_core/threads.py, benchmarks/training_throughput.py)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: main test setup pipeline reference lab roster sync-checks handout solutions report

setup:
	@bash scripts/setup.sh

## main: the instructor pipeline (release, simulated students, autograde, grades, feedback),
##       then the reference VAE benchmark (8000 training steps, test ELBO and log p(x))
main: setup
	$(PY) -m course.pipeline
	$(PY) -m dpm_core.reference $(ARGS)

## test: run the test suite
test:
	@bash scripts/setup.sh --browser
	$(PY) -m pytest $(ARGS)

pipeline: setup
	$(PY) -m course.pipeline

## sync-checks: write the one-line hidden region (grade("<id>"): judged by course/judges) of every graded cell of source/
sync-checks:
	$(PY) -m course.sync_checks

reference: setup
	$(PY) -m dpm_core.reference $(ARGS)

## lab: JupyterLab with the nbgrader and widgets extensions, on 127.0.0.1 (as root too)
lab: setup
	bash scripts/lab.sh $(ARGS)

## roster: load the class roster into course/gradebook.db: make roster CSV=students.csv [ARGS=--root DIR]
##         (columns id, first_name, last_name, email; nothing is written unless every row is good)
roster: setup
	@test -n "$(CSV)" || { echo 'name the roster file: make roster CSV=students.csv'; exit 2; }
	$(PY) -m course.roster "$(CSV)" $(ARGS)

## handout: what students receive (not the repository): make handout OPEN="vae_basics" [RELEASE=...] [OUT=handout]
##          the release notebooks of OPEN, dpm_core with the graded references withheld, the
##          solutions of RELEASE (default: every assignment before the first open one)
OUT ?= handout
handout: setup
	@test -n "$(OPEN)" || { echo 'name the open assignments: make handout OPEN="vae_basics"'; exit 2; }
	$(PY) -m course.handout $(OUT) --open $(OPEN) $(if $(RELEASE),--release $(RELEASE)) $(ARGS)

## solutions: after a deadline, release its solutions and references: make solutions RELEASE="vae_basics" [OPEN=...]
solutions: setup
	@test -n "$(RELEASE)" || { echo 'name the released assignments: make solutions RELEASE="vae_basics"'; exit 2; }
	$(PY) -m course.handout $(OUT) --release $(RELEASE) $(if $(OPEN),--open $(OPEN)) $(ARGS)

## report: the class report of a graded assignment: make report A=vae_basics [ARGS="--root DIR --out DIR"]
##         (course/reports/<A>/index.html: points, named mistakes, review, time and memory, similar code)
report: setup
	@test -n "$(A)" || { echo 'name the assignment: make report A=vae_basics'; exit 2; }
	$(PY) -m course.report "$(A)" $(ARGS)
