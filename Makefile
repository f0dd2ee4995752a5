.PHONY: setup run test bench lint lab lab-down
setup:
	bash scripts/setup.sh
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/bench.sh
lab:
	bash scripts/lab.sh
lab-down:
	bash scripts/lab.sh down
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
