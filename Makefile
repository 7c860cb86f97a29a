# The two commands of the README. Both create .venv and install interp into it first.
#   make demo  - run the IOI reproduction on the default model (GPT-2 small, or the offline
#                SmolLM2-135M when GPT-2's weights cannot be had), writing results/
#   make test  - run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch (pip finds it on this project's machines; elsewhere PyPI serves it).
TORCH  ?= torch==2.13.0

.PHONY: demo test lint install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/interp ioi --model auto --n-prompts 100 --seed 0 --out results

test: install
	$(BIN)/ruff check interp tests experiments
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check interp tests experiments
