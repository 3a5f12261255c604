# Two commands matter: `make demo` and `make test` (see README.md).
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
# Every direct and transitive dependency at the version the tests passed with (make lock refreshes it);
# make test-latest installs with LOCK=constraints.txt instead: the newest releases pyproject.toml allows.
LOCK      ?= requirements/lock.txt
PIP       := $(PY) -m pip install --quiet --constraint $(LOCK)
PIP_PIN   := pip==26.3
BUNDLE    := patchwidget/static/widget.js
JS_SRC    := $(wildcard js/src/*.js js/src/*.css) js/package.json js/package-lock.json
CHROMIUM  ?= /usr/bin/chromium
HEADLESS  ?=

.PHONY: demo test test-latest test-py test-js lint lock browser js screenshot docs dist clean

## make demo: install, then open JupyterLab on the quickstart (HEADLESS=1: write quickstart.png instead)
demo: $(VENV)/.installed
ifeq ($(HEADLESS),1)
	$(VENV)/bin/patchwidget run --out quickstart.png
else
	$(VENV)/bin/jupyter lab examples/quickstart.ipynb
endif

## make test: install with dev extras, then lint and run every test (Python, JavaScript, browser)
test: $(VENV)/.installed browser lint docs
	cd js && npm test
	$(PY) -m pytest

## make docs: the documentation site into site/, strictly (a broken link or reference fails)
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict  # not --quiet: it hides the warnings strict counts

## make test-latest: the same tests in .venv-latest, on the newest releases pyproject.toml's ranges allow
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest LOCK=constraints.txt PIP_PIN=pip

## make lock: resolve pyproject.toml (with dev extras) and the build requirements again into requirements/lock.txt
lock: $(VENV)/.installed
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev --constraint constraints.txt \
		--find-links /opt/wheels --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--annotation-style line --output-file requirements/lock.txt

test-py: $(VENV)/.installed
	$(PY) -m pytest

test-js: js/node_modules/.installed
	cd js && npm test

## make screenshot: refresh the README's screenshot from the end-to-end test
screenshot: $(VENV)/.installed browser
	$(PY) -m pytest tests/ui -q
	mkdir -p docs && cp test-output/ui/widget-heads.png docs/widget.png
	cp test-output/ui/widget-circuit.png docs/widget_circuit.png
	cp test-output/ui/widget-edges.png docs/widget_edges.png
	cp test-output/ui/widget-lens.png docs/widget_lens.png

## make lint: ruff (lint and format check) on the Python, biome on js/
lint: $(VENV)/.installed js/node_modules/.installed
	$(VENV)/bin/ruff check patchwidget tests scripts benchmarks
	$(VENV)/bin/ruff format --check patchwidget tests scripts benchmarks
	cd js && npm run lint

# The CPU build of torch first, pinned through the lock (and constraints.txt), so pip never
# pulls a CUDA build; users with a GPU install their own torch before this. The build
# requirements come from the lock too, hence --no-build-isolation.
$(VENV)/.installed: pyproject.toml constraints.txt $(LOCK) requirements/build.in $(BUNDLE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade "$(PIP_PIN)"
	$(PIP) torch -r requirements/build.in
	SKIP_JUPYTER_BUILDER=1 $(PIP) --no-build-isolation -e ".[dev]"
	touch $@

## make dist: the sdist and the wheel into dist/, built with the locked hatchling (the sdist carries the built bundle)
dist: $(VENV)/.installed $(BUNDLE)
	rm -rf dist
	$(PY) -m hatchling build --target sdist --directory dist
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

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
	rm -rf $(VENV) js/node_modules patchwidget/static dist
