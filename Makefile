# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-quick study test mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dtgnet demo --force --out demo_out

demo-quick: $(STAMP)
	$(VENV)/bin/dtgnet demo --quick --force --out demo_out

study: $(STAMP)
	$(VENV)/bin/dtgnet study --force --out study_out

test: $(STAMP)
	$(PY) -m pytest

# mutation testing of the losses, weighting, checkpoints, samplers and run state (not part of `make test`)
mutation: $(STAMP)
	$(PY) -m pip install -q 'mutmut>=3'
	$(PY) benchmarks/mutation.py --json mutation.json

clean:
	rm -rf $(VENV) demo_out study_out runs mutation.json
