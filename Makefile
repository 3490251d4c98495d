# One command per habit. `make run` and `make test` set up .venv on first use.
PY := .venv/bin/python

.venv/installed: setup.py
	python3 -m venv .venv
	.venv/bin/pip install -e ".[dev]"
	touch $@

.PHONY: run test lint format smoke slow
run: .venv/installed        ## the headline job on the embedded phantom (~10 min on 2 CPU cores)
	$(PY) cli.py run --generator vaegan

smoke: .venv/installed      ## seconds: every stage wired end to end, numbers meaningless
	$(PY) cli.py run --generator vaegan --profile smoke --name smoke --force

test: .venv/installed
	$(PY) -m pytest

slow: .venv/installed
	$(PY) -m pytest -m slow

lint: .venv/installed
	.venv/bin/ruff check .

format: .venv/installed
	.venv/bin/ruff format .
