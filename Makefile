# Two commands matter: `make demo` and `make test`. Both need only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/streamd demo

test: $(BIN)/activate
	$(BIN)/ruff check streamd tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
