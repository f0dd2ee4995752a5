.PHONY: setup run test bench lint
setup:
	bash scripts/setup.sh
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/bench.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
