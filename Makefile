# The two entry points of the README (serve, test). Both set up .venv on first use.
.PHONY: setup serve demo test lint bench

setup:
	@bash scripts/setup.sh

# The whole service on the embedded default: SQLite in .metalic/, a local Ray, the API on :8000.
serve: setup
	.venv/bin/metalic serve

# A sample solve on the embedded default: Advection (beta = 3), two subdomains, arm u,flux.
demo: setup
	@mkdir -p out
	.venv/bin/metalic solve advection --param beta=3 --arm u,flux --adam 1000 --lbfgs 3000 \
		--out out/demo.pt --plot out/demo.png

test: setup
	@bash scripts/ensure_postgres.sh
	@bash scripts/ensure_chromium.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench: setup
	.venv/bin/python benchmarks/train_speed.py
