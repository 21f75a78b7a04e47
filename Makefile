# pocketpost. On a fresh machine:
#   make sim    the emulated appliance on localhost, with a demo account
#   make test   every test
# Both create the virtual environment (.venv) when it is missing.

VENV ?= .venv
BIN := $(VENV)/bin
# The emulated board's MicroPython wheel exists for CPython 3.10-3.13, and some pinned test tools
# need 3.11: the first of these in 3.11-3.13.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null && { echo $$p; break; }; done)
# Reference servers and clients the tests run against (Debian package names).
DEBIAN_PACKAGES := dovecot-pop3d postfix swaks mpop fetchmail curl dosfstools socat mtools
SIM_OPTIONS ?= --demo-user demo:demo

.PHONY: sim test venv debian-packages clean bench

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "pocketpost needs CPython 3.11, 3.12 or 3.13 as python3, python3.11, python3.12 or python3.13 (or PYTHON=/path/to/python)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/.installed

sim: venv
	$(BIN)/pocketpost sim $(SIM_OPTIONS)

# The firmware's protocol tests, run a second time under the heap the firmware issue set
# (everything else runs under the unix board's default, boards/unix/board.json).
PROTOCOL_TESTS := tests/test_smoke.py tests/test_pop3.py tests/test_smtp.py tests/test_console.py \
	tests/test_limits.py tests/test_storage.py tests/test_recovery.py tests/test_third_party_clients.py

test: venv debian-packages
	$(BIN)/pytest
	POCKETPOST_TEST_HEAP=160k $(BIN)/pytest $(PROTOCOL_TESTS)

debian-packages:
	@scripts/ensure-debian-packages $(DEBIAN_PACKAGES)

# `make bench`: pocketpost against aiosmtpd, Postfix's smtp-sink and Dovecot on loopback; writes
# docs/benchmarks.md and docs/benchmarks.png (bench/run.py; BENCH_OPTIONS=--quick to try it).
BENCH_DEBIAN_PACKAGES := dovecot-pop3d postfix
BENCH_OPTIONS ?=

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

bench: $(BIN)/.bench-installed
	@scripts/ensure-debian-packages $(BENCH_DEBIAN_PACKAGES)
	$(BIN)/python bench/run.py $(BENCH_OPTIONS)

clean:
	rm -rf $(VENV) sim-data build .pytest_cache
