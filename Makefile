# Two commands do all the set-up (see README.md):
#   make demo   train a small ViT on the built-in phantom and write anatomy-grouped figures
#   make test   run the test suite
# Both create the virtual environment in .venv when it is missing.
# TORCH picks the PyTorch build: the default pins the release on the project's dev/CI machines;
# with a GPU use e.g. `make demo TORCH="torch torchvision"` (or conda: environment.yml).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
# the suite runs on every core (pytest-xdist; each worker uses one torch thread, tests/conftest.py)
XDIST ?= -n auto --dist worksteal
OUT ?= outputs/demo
PY := $(VENV)/bin/python
STAMP := $(VENV)/.workbench-installed

.PHONY: demo test env browser clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --user --name workbench --display-name "workbench" >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo --out $(OUT)

# In CI (CI=true, root) Debian's Chromium is installed for the real-browser test; elsewhere that
# test skips with a reason when no Chromium is found.
browser:
	@if [ -n "$$CI" ] && ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium"; fi

test: $(STAMP) browser
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs
