# The two commands of the README. Each sets up what it needs (scripts/setup.sh) first.
PY := .venv/bin/python

.PHONY: main test setup

setup:
	@bash scripts/setup.sh

## main: train the reference VAE for 60 s, print test ELBO and log p(x), write outputs/reference_vae.png
main: setup
	$(PY) -m dpm_core.reference $(ARGS)

## test: run the test suite
test: setup
	$(PY) -m pytest $(ARGS)
