# One command per habit; .pre-commit-config.yaml runs the same targets, .ci/run the same tools.
.PHONY: lint format typecheck test test-fast check

lint:  ## ruff's rules and formatting, checked
	ruff check .
	ruff format --check .

format:  ## fix what ruff can, then format
	ruff check --fix .
	ruff format .

typecheck:  ## mypy --strict over the package, connectors, tests, bench and the example plugin
	mypy

test:  ## the whole suite: real Redis and PostgreSQL (embedded ones when none answer)
	pytest -q

test-fast:  ## unit tests and the example plugin's: seconds
	pytest -q tests/unit examples/connector-plugin/tests

check: lint typecheck test  ## what CI checks, in this environment
