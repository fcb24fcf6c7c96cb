# The two commands a user needs: `make demo` and `make test`. Everything else is set up on demand.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint services-up services-down bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/enrich demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

services-up: setup
	$(BIN)/enrich services up

services-down: setup
	$(BIN)/enrich services down

bench: setup
	$(BIN)/enrich bench

clean:
	rm -rf .cache build *.egg-info
