# Two commands matter: `make demo` and `make test` (see README.md).
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip install --quiet --constraint constraints.txt
BUNDLE    := patchwidget/static/widget.js
JS_SRC    := $(wildcard js/src/*.js js/src/*.css) js/package.json js/package-lock.json
CHROMIUM  ?= /usr/bin/chromium
HEADLESS  ?=

.PHONY: demo test test-py test-js lint browser js screenshot clean

## make demo: install, then open JupyterLab on the quickstart (HEADLESS=1: write quickstart.png instead)
demo: $(VENV)/.installed
ifeq ($(HEADLESS),1)
	$(VENV)/bin/patchwidget run --out quickstart.png
else
	$(VENV)/bin/jupyter lab examples/quickstart.ipynb
endif

## make test: install with dev extras, then run every test (Python, JavaScript, browser)
test: $(VENV)/.installed browser
	cd js && npm test
	$(PY) -m pytest

test-py: $(VENV)/.installed
	$(PY) -m pytest

test-js: js/node_modules/.installed
	cd js && npm test

## make screenshot: refresh the README's screenshot from the end-to-end test
screenshot: $(VENV)/.installed browser
	$(PY) -m pytest tests/ui -q
	mkdir -p docs && cp test-output/ui/widget-heads.png docs/widget.png

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check patchwidget tests scripts benchmarks
	$(VENV)/bin/ruff format --check patchwidget tests scripts benchmarks

# The CPU build of torch first, pinned through constraints.txt, so pip never
# pulls a CUDA build; users with a GPU install their own torch before this.
$(VENV)/.installed: pyproject.toml constraints.txt $(BUNDLE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch
	SKIP_JUPYTER_BUILDER=1 $(PIP) -e ".[dev]"
	touch $@

js: $(BUNDLE)

$(BUNDLE): js/node_modules/.installed $(JS_SRC)
	cd js && npm run build

js/node_modules/.installed: js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund
	touch $@

# Debian's chromium for the end-to-end tests; never a downloaded browser.
browser:
	@test -x $(CHROMIUM) || { apt-get update -q && apt-get install -y -q chromium; }

clean:
	rm -rf $(VENV) js/node_modules patchwidget/static
