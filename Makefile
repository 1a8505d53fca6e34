# Two commands on a fresh machine (see README.md):
#   make quickstart   set up .venv, train a model, export it to INT8 ONNX, classify images (synthetic, or DATA=folder)
#   make test         set up .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,train,dicom,dev
DATA ?=
MODEL ?= knee-cnn
OUT ?= runs/$(MODEL)
KEDGE = $(VENV)/bin/kedge

.PHONY: setup serve-env quickstart models test test-fast lint typecheck clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --constraint constraints.txt --editable ".[$(EXTRAS)]"
	touch $@

quickstart: setup
ifeq ($(DATA),)
	@echo "== 1/6 synthetic knee radiographs (generated, no patient data)"
	$(KEDGE) synth --out runs/synthetic-knees --per-class 80 --overwrite
	@echo "== 2/6 the two shipped models on two synthetic images. They were trained on real radiographs and"
	@echo "       are not meant for synthetic ones: their answers here (right or wrong) say nothing about them."
	@echo "       A model's input gate may withhold its answer (exit status 3): that is intended, not a failure."
	$(KEDGE) infer runs/synthetic-knees/Normal/normal-0000.png runs/synthetic-knees/Osteoporosis/osteoporosis-0000.png \
		|| { [ $$? -eq 3 ] && echo "       (exit status 3: an answer was withheld by the input gate, as intended)"; }
	@echo "== 3/6 train a small knee-cnn on the synthetic knees"
	$(KEDGE) train knee-cnn --data runs/synthetic-knees --out runs/quickstart --width 0.25 --epochs 10 --overwrite
	@echo "== 4/6 export to ONNX and INT8, then the parity gate on the test split (rule: docs/export-and-parity.md)"
	@$(KEDGE) export runs/quickstart --int8 --calib runs/synthetic-knees --calib-size 120 --data runs/synthetic-knees --split test \
		|| { echo "quickstart: the parity gate FAILED (table above): a form disagrees with Keras beyond the rule in"; \
		     echo "  docs/export-and-parity.md. runs/quickstart is kept for inspection; run make quickstart again, or see"; \
		     echo "  kedge parity runs/quickstart --data runs/synthetic-knees --split test"; exit 1; }
	@echo "== 5/6 fit the new bundle's input envelope (docs/envelope.md) on its train split"
	$(KEDGE) envelope runs/quickstart --data runs/synthetic-knees --quiet \
		|| echo "       no envelope fitted (reason above): kedge infer says that no input check is possible"
	@echo "== 6/6 classify the synthetic Osteopenia folder with the new bundle (exit status 3, an answer withheld"
	@echo "       by the input gate, is intended behaviour)"
	$(KEDGE) infer runs/synthetic-knees/Osteopenia --model runs/quickstart --csv --quiet > runs/quickstart-osteopenia.csv \
		|| [ $$? -eq 3 ]
	@$(VENV)/bin/python -m kedge.quickstart runs/quickstart runs/quickstart-osteopenia.csv
else
	$(KEDGE) train $(MODEL) --data "$(DATA)" --out "$(OUT)" --overwrite $(ARGS)
	$(KEDGE) export "$(OUT)" --int8 --calib "$(DATA)" --data "$(DATA)" --split test
	$(KEDGE) envelope "$(OUT)" --data "$(DATA)" || echo "no envelope fitted (reason above): no input check"
	$(KEDGE) infer "$(DATA)" --model "$(OUT)" --csv > "$(OUT)/predictions.csv" || [ $$? -eq 3 ]
	@echo "predictions: $(OUT)/predictions.csv"
endif

# Triton's Python-backend stub must match the interpreter's patch version exactly; PyTriton's
# bundled server was seen working with Debian's own Python 3.11.2 (not a pyenv one), so the
# serving environment is made from it. Without /usr/bin/python3 the Triton tests skip.
SERVE_PYTHON ?= /usr/bin/python3
SERVE_VENV ?= .venv-serve
serve-env: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: setup.cfg constraints-serve.txt
	@if [ -x "$(SERVE_PYTHON)" ]; then \
		$(SERVE_PYTHON) -m venv $(SERVE_VENV) && \
		$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip && \
		$(SERVE_VENV)/bin/python -m pip install --quiet --constraint constraints-serve.txt --editable ".[cpu,serve]" && \
		touch $@; \
	else echo "serve-env: $(SERVE_PYTHON) not found; the Triton tests will skip"; fi

# Rebuild both shipped models from the real radiographs (hours on 2 cores; see `kedge rebuild --help`).
models: setup
	$(KEDGE) rebuild knee-cnn --data "$(or $(DATA),../shared/data)"
	$(KEDGE) rebuild resnet50-gru --data "$(or $(DATA),../shared/data)"

test: setup serve-env
	$(VENV)/bin/python -m pytest

# The inner loop: everything that needs no TensorFlow (no training, no Keras), in a few
# minutes; the `tensorflow` marker is set by tests/conftest.py from the tf_keras fixture.
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow and not tensorflow"

lint: setup
	$(VENV)/bin/ruff check .

# TensorRT cannot be installed without a GPU toolchain: type-check kedge's TensorRT code
# against NVIDIA's stubs, unpacked (not installed) and repaired by .ci/trt_stubs.py.
TRT_STUBS = $(VENV)/trt-stubs
typecheck: setup
	rm -rf $(VENV)/trt-stubs-wheel
	$(VENV)/bin/python -m pip download --quiet --no-deps --dest $(VENV)/trt-stubs-wheel \
		"tensorrt-stubs==$$(grep -i '^tensorrt-stubs==' constraints.txt | cut -d= -f3)"
	$(VENV)/bin/python .ci/trt_stubs.py $(VENV)/trt-stubs-wheel/*.whl $(TRT_STUBS)
	MYPYPATH=$(TRT_STUBS) $(VENV)/bin/python .ci/typecheck.py $(VENV)/mypy-tree

clean:
	rm -rf $(VENV) $(SERVE_VENV) runs
