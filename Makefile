.PHONY: setup demo test test-slow clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/bitsmith demo

test: setup
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

clean:
	rm -rf .venv runs build src/*.egg-info
