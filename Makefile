# Two commands on a fresh Debian/Ubuntu machine:
#   make demo   set up (system library, .venv, package) and run the main job
#   make test   same set-up, then the test suite
# Every step is idempotent: a second run skips what is already done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHOLMOD_HEADER := /usr/include/suitesparse/cholmod.h
# apt-get as root, through sudo otherwise.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench system clean

# `system` runs every time (it only looks, unless something is missing), so a machine
# whose .venv is up to date still gets what a newer Makefile asks for.
demo: system $(STAMP)
	$(BIN)/sparsegauss demo --out demo-output

test: system $(STAMP)
	$(BIN)/python -m pytest -q

bench: system $(STAMP)
	$(BIN)/python -m benchmarks

# scikit-sparse compiles against CHOLMOD (SuiteSparse); it also needs a C compiler,
# the Python headers and venv. CHOLMOD calls the system BLAS (libblas.so.3), which on a
# fresh Debian is the unoptimized reference BLAS: Debian's OpenBLAS takes libblas.so.3
# and liblapack.so.3 over through the alternatives system and makes large
# factorizations 3-5x faster. Install only what is missing.
system:
	@missing=""; \
	[ -f $(CHOLMOD_HEADER) ] || missing="$$missing libsuitesparse-dev"; \
	blas=$$(/sbin/ldconfig -p 2>/dev/null | awk '/libblas\.so\.3 /{print $$NF; exit}'); \
	case "$$(readlink -f "$$blas")" in \
	  *openblas*|*mkl*|*blis*) ;; \
	  *) missing="$$missing libopenblas0-pthread" ;; \
	esac; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	inc=$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	[ -f "$$inc/Python.h" ] || missing="$$missing python3-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(BIN)/python:
	$(MAKE) system
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(MAKE) system
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,plot,images]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-output *.egg-info
