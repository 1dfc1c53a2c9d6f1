# The two commands a fresh machine needs (see README.md):
#   make demo   set up .venv if needed, then run the main job (writes to outputs/)
#   make test   set up .venv if needed, then run every check CI runs
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.detr_edu-installed
export MPLBACKEND := Agg

.PHONY: demo test setup browser sync-check layering nbtest pytest readme export clean-nbs docs

setup: $(STAMP)

# (re)install when the venv is missing or pyproject.toml changed since the last install (uv, else pip: see the script)
$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh $(VENV)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/train_shapes_demo.py --out outputs

test: $(STAMP) browser sync-check layering nbtest pytest
	@echo "all checks passed"

# The website tests open every page in headless Chromium: Debian's chromium + chromium-driver.
# Installed here when missing and we may (root with apt-get); otherwise those tests skip (fail under CI=true).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium + chromium-driver for the website tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; \
	  else echo "chromium/chromedriver not found: the browser tests will skip"; fi; fi

# nbdev-clean and nbdev-export must leave the tree unchanged, and README.md must match nbs/index.ipynb
sync-check: $(STAMP)
	@before=$$(git status --porcelain -- nbs detr_edu; git diff -- nbs detr_edu | sha1sum); \
	$(BIN)/nbdev-clean >/dev/null && $(BIN)/nbdev-export >/dev/null || exit 1; \
	after=$$(git status --porcelain -- nbs detr_edu; git diff -- nbs detr_edu | sha1sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean / nbdev-export changed files: notebooks are not clean or detr_edu/ is out of sync:"; \
	  git status --short -- nbs detr_edu; exit 1; fi; \
	echo "notebooks clean, library in sync with nbs/"
	@$(BIN)/python scripts/make_readme.py --check && echo "README.md in sync with nbs/index.ipynb"

# every module imports only what earlier lessons export, and no two modules import each other
layering: $(STAMP)
	$(BIN)/python scripts/check_imports.py

# Two workers, one thread each: torch's default of one thread per core in each of two workers oversubscribes two
# cores, and a tiny model then spends most of its time waiting for threads (8x slower tests under load).
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

nbtest: $(STAMP)
	$(ONE_THREAD) $(BIN)/nbdev-test --n-workers 2 --timing

pytest: $(STAMP)
	$(ONE_THREAD) $(BIN)/python -m pytest tests -n 2 -q --durations=15

# developer conveniences
export: $(STAMP)
	$(BIN)/nbdev-export
clean-nbs: $(STAMP)
	$(BIN)/nbdev-clean
readme: $(STAMP)
	$(BIN)/python scripts/make_readme.py
docs: $(STAMP)
	$(BIN)/python docs/build_docs.py
