# mri-anomaly: the README's commands. Everything runs inside .venv (created on first use, reused after).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.dev-deps
# What the package and its build need (the demo stops here), and what the tests, lint and the optional export
# formats add (pytest, hypothesis, ruff; onnx/onnxscript/onnxruntime; fire and jsonschema for MONAI's bundle
# checks): about 20 s of a fresh demo's setup left out.
RUNTIME_DEPS := numpy scipy monai nibabel nilearn scikit-learn matplotlib pandas tqdm PyYAML
BUILD_DEPS := ninja setuptools wheel
DEV_DEPS := fire jsonschema onnx onnxscript onnxruntime pytest hypothesis ruff
DEMO_OUT ?= demo-out
JOBS ?= 2

.PHONY: setup test pytest ctest cuda-check demo report-screenshot bench lint clean info

setup: $(STAMP) $(DEV_STAMP)

# torch==2.13.0 goes in first and alone: the machine has a local CPU wheel for it, and an unpinned
# torch would pull several GB of CUDA wheels. The package is installed editable with
# --no-build-isolation so the extension compiles against exactly this torch.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: $(VENV)/bin/python constraints.txt
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c constraints.txt $(BUILD_DEPS)
	touch $@

$(VENV)/.deps: $(VENV)/.torch constraints.txt
	$(PIP) install -q -c constraints.txt $(RUNTIME_DEPS)
	touch $@

$(DEV_STAMP): $(VENV)/.deps constraints.txt
	$(PIP) install -q -c constraints.txt $(DEV_DEPS)
	touch $@

# The extension needs torch and the build tools only: it compiles (about 65 s on 2 cores) while pip installs the
# other dependencies (about 45 s), two jobs of one sub-make whichever target asked for the package.
$(VENV)/.extension: $(VENV)/.torch pyproject.toml setup.py $(CSRC)
	MAX_JOBS=$(JOBS) $(PIP) install -q -c constraints.txt --no-build-isolation --no-deps -e .
	touch $@

$(STAMP): $(VENV)/.torch constraints.txt pyproject.toml setup.py $(CSRC)
	$(MAKE) --no-print-directory -j 2 $(VENV)/.deps $(VENV)/.extension
	touch $@

# C++ kernel tests (ctest) and, where nvcc exists, the sm_90 compile check of the CUDA kernels.
ctest: $(VENV)/.deps
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(abspath $(PY)) > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j $(JOBS) >> build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	ctest --test-dir build/cmake --output-on-failure

pytest: $(STAMP) $(DEV_STAMP)
	$(PY) -m pytest -q

# ruff (pinned in constraints.txt): the formatter's check and the lint rules of pyproject.toml
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff format --check python tests benchmarks docs
	$(VENV)/bin/ruff check python tests benchmarks docs

test: $(STAMP) lint ctest pytest

demo: $(STAMP)
	$(VENV)/bin/mri-anomaly demo --out $(DEMO_OUT)

# docs/images/report_screenshot.png from $(DEMO_OUT)/report/report.html in headless Chromium (apt-get install
# chromium); fails without writing when the page logs a console error or a figure does not load
report-screenshot: $(STAMP)
	$(PY) docs/refresh_report_screenshot.py --demo $(DEMO_OUT)

bench: $(STAMP)
	$(PY) benchmarks/flow_step.py
	$(PY) benchmarks/glow_step.py
	$(PY) benchmarks/deep_sad_labels.py

info: $(STAMP)
	$(VENV)/bin/mri-anomaly info

clean:
	rm -rf build build-cmake.log python/mri_anomaly/*.so *.egg-info python/*.egg-info
