# Two commands on a fresh machine (see README.md):
#   make quickstart   set up .venv, then train and evaluate a model (synthetic data, or DATA=folder)
#   make test         set up .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,train,dicom,dev
DATA ?=
MODEL ?= knee-cnn
OUT ?= runs/$(MODEL)
KEDGE = $(VENV)/bin/kedge

.PHONY: setup quickstart test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --constraint constraints.txt --editable ".[$(EXTRAS)]"
	touch $@

quickstart: setup
ifeq ($(DATA),)
	$(KEDGE) synth --out runs/synthetic-knees --per-class 80 --overwrite
	$(KEDGE) train knee-cnn --data runs/synthetic-knees --out runs/quickstart --width 0.25 --epochs 10 --overwrite
	$(KEDGE) evaluate runs/quickstart --data runs/synthetic-knees --split test
else
	$(KEDGE) train $(MODEL) --data "$(DATA)" --out "$(OUT)" --overwrite $(ARGS)
	$(KEDGE) evaluate "$(OUT)" --data "$(DATA)" --split test
endif

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
