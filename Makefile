# The README's two commands. Both create .venv and install drx (editable, with its test extra).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drx-installed
# A new .venv takes 6.6 GiB (torch 2.14.1 with its CUDA libraries is 5.6 GiB of it); check first,
# so a full disk is one clear line rather than pip's OSError halfway through.
VENV_GIB ?= 8

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
		free >= $(VENV_GIB) or sys.exit(f'make: a new $(VENV) needs about $(VENV_GIB) GiB free; the disk of $(CURDIR) has {free:.1f} GiB')"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the ablation demo on the embedded benchmark through a local Ray, then its report.
demo: $(STAMP)
	$(BIN)/drx demo

# The import contracts of the design (layers, independence, no torch in the report), then the
# whole test suite (slow end-to-end tests included).
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
