# Two commands do everything on a fresh machine (both idempotent, safe to re-run):
#   make demo   - set up .venv, install, open napari with the synthetic leaf scene and the DGC panel
#   make test   - set up .venv, install, lint (ruff, import-linter), run the test suite
# Options:
#   make demo SCREENSHOT=docs/screenshots/demo.png   save a window screenshot and exit (headless OK)
#   make demo DEMO_ARGS="--train-steps 60"           extra arguments for `napari-dgc demo`
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" demo   GPU install

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; pinning keeps a CPU machine from pulling a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
SYS_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 \
	libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1
SCREENSHOT ?=
DEMO_ARGS ?=

.PHONY: demo test lint system-deps venv clean

system-deps:
	@if command -v Xvfb >/dev/null 2>&1 && ldconfig -p | grep -q libxcb-icccm.so.4; then \
		echo "system packages: present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYS_PACKAGES); \
	else \
		echo "Please install (as root): apt-get install $(SYS_PACKAGES)"; \
	fi

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,testing]"
	@touch $(STAMP)

venv: $(STAMP)

demo: system-deps $(STAMP)
	@if [ -n "$(SCREENSHOT)" ] && [ -z "$$DISPLAY" ]; then \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/napari-dgc demo --screenshot "$(SCREENSHOT)" $(DEMO_ARGS); \
	elif [ -n "$(SCREENSHOT)" ]; then \
		$(VENV)/bin/napari-dgc demo --screenshot "$(SCREENSHOT)" $(DEMO_ARGS); \
	else \
		$(VENV)/bin/napari-dgc demo $(DEMO_ARGS); \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

test: system-deps lint
	$(PY) -m pytest -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build *.egg-info
