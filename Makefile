# The same commands in CI as on a laptop.
.PHONY: setup demo test lint bench synth

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check quiver functions proxy_tier cdk app.py tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/e2e.py

synth:
	QUIVER_WITH_CDK=1 bash scripts/setup.sh
	bash scripts/synth.sh
