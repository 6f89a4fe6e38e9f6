.PHONY: setup demo test test-slow clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/bitsmith demo

# lint-imports checks the floors of docs/architecture.md (contracts in pyproject.toml); the suite
# runs on both cores.
test: setup
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q -n 2

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

clean:
	rm -rf .venv runs build src/*.egg-info
