# Entry points (see README): `make demo`, `make test` and `make docs`. Each builds the venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The project's MNIST copy sits in ../shared/mnist on our machines; elsewhere fedactors
# downloads MNIST into its cache directory (or $FEDACTORS_DATA) on first use.
SHARED_MNIST := $(abspath ../shared/mnist)
ifeq ($(origin FEDACTORS_DATA), undefined)
ifneq ($(wildcard $(SHARED_MNIST)/MNIST/raw),)
export FEDACTORS_DATA := $(SHARED_MNIST)
endif
endif

.PHONY: setup demo test docs bench clean

setup: $(VENV)/.installed

# Build tools first so the package can build without isolation (no second download of them);
# the editable install rebuilds nothing at import time: re-run `make setup` after changing csrc/.
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard csrc/*) $(VENV)/.modules
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
	$(BIN)/python -m pip install --quiet --no-build-isolation --editable ".[test]"
	touch $@

# The editable install maps each module file it saw to its path: a module that moved or became a package
# (fedactors/data.py -> fedactors/data/) is found only after a reinstall. So the list of module files is a
# prerequisite too, rewritten (and so newer) only when it changes.
MODULES := $(sort $(wildcard fedactors/*.py fedactors/*/*.py fedactors/*/*/*.py))
$(VENV)/.modules: FORCE
	@mkdir -p $(VENV)
	@echo '$(MODULES)' | cmp -s - $@ || echo '$(MODULES)' > $@

FORCE:

demo: setup
	$(BIN)/fedactors run --clients 100 --frac 0.1 --rounds 3 --run-id demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/python -m pytest

# The documentation site, as tests/test_docs.py builds it: a broken link, anchor or reference fails (--strict).
# Its tools are the docs extra, which `make setup` installs (the test extra holds it: the suite builds the site too).
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, printed on every build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "the site is in build/site: open build/site/index.html"

bench: setup
	$(BIN)/python bench/aggregate.py

clean:
	rm -rf $(VENV) build runs
