# Two commands: `make test` and `make demo`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MEDIA ?= ../shared/media
VIDEO ?= $(MEDIA)/edtalk_uncrop_Obama.mp4
AUDIO ?=
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: test demo venv clean-venv bench wheel-check

venv: $(STAMP)

# torch goes first, pinned to the CPU build that lies on these machines, so that no dependency
# pulls a multi-GB CUDA build; constraints.txt pins everything else to a set that installs here.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

# The wheel, installed into a fresh venv (dependencies borrowed from .venv), run from a temp dir:
# --version, --help, a short prepare + render. .ci/run runs it after `make test`.
wheel-check: $(STAMP)
	VENV="$(abspath $(VENV))" MEDIA="$(abspath $(MEDIA))" .ci/wheel_check.sh

demo: $(STAMP)
	$(PY) jobs/demo.py --video "$(VIDEO)" $(if $(AUDIO),--audio "$(AUDIO)") --out "$(DEMO_OUT)"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
