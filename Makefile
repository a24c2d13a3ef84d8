# sscard-terminal: two commands for a fresh Debian machine.
#   make demo   create the venv (and install system packages when root), read the virtual card, then
#               a day at a small clinic on virtual cards, uploaded to the reference central service
#   make lint   ruff, and mypy --strict over the packages as installed (sscard.apdu, sscard.terminal, ...)
#   make test   the same set-up, lint, then the whole test suite (pcscd + vpcd included)
VENV    ?= .venv
PY      := $(VENV)/bin/python
SYSPKGS := pcscd vsmartcard-vpcd libpcsclite-dev opensc pcsc-tools swig gcc python3-venv python3-dev \
           chromium chromium-driver

PACKAGES := apdu drivers terminal central message fixtures

.PHONY: demo lint test system venv clean

system:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -q >/dev/null || true); \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (run 'make system' as root or: sudo apt-get install$$missing)" >&2; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pyscard has no manylinux wheel: build it from source against libpcsclite-dev
	$(PY) -m pip install -q --no-binary pyscard -e '.[test]'
	touch $@

venv: system $(VENV)/.installed

demo: venv
	$(VENV)/bin/sscard read
	$(VENV)/bin/sscard demo

# mypy reads the tree as it is installed, under sscard (pyproject.toml maps sscard.apdu to apdu/ and
# so on, which mypy cannot follow): build/typecheck/sscard holds a link to each folder
lint: venv
	$(VENV)/bin/ruff check .
	rm -rf build/typecheck && mkdir -p build/typecheck/sscard
	for d in $(PACKAGES); do ln -s ../../../$$d build/typecheck/sscard/$$d; done
	cd build/typecheck && $(abspath $(VENV))/bin/mypy --config-file ../../pyproject.toml -p sscard

# SSCARD_REQUIRE_PCSCD=1 / SSCARD_REQUIRE_BROWSER=1: a missing pcscd/vpcd or chromium fails the PC/SC
# and counter-page tests instead of skipping them
test: venv lint
	SSCARD_REQUIRE_PCSCD=1 SSCARD_REQUIRE_BROWSER=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
