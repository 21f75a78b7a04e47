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
DEBIAN_PACKAGES := dovecot-pop3d postfix swaks mpop fetchmail curl dosfstools socat stress-ng mtools
SIM_OPTIONS ?= --demo-user demo:demo

.PHONY: sim test venv debian-packages clean bench memory

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "pocketpost needs CPython 3.11, 3.12 or 3.13 as python3, python3.11, python3.12 or python3.13 (or PYTHON=/path/to/python)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/.installed

sim: venv
	$(BIN)/pocketpost sim $(SIM_OPTIONS)

# `make test`: every test on every core (pytest-xdist, each firmware on its own ports and data)
# under the unix board's heap (boards/unix/board.json); every test again at the heap floor
# (docs/memory.md) but those that need more: the hostile loads; then, while a CPU-bound load
# keeps every core busy (scripts/under-cpu-load), every test with the code in place (as the
# frozen build a board without PSRAM runs it: boards/unix/README.md) at its heap, and the
# memory-sensitive tests (marked `memory`) twice in a row, both as .mpy files at the floor where
# they fit it and with the code in place.
FLOOR_HEAP := 160k
ABOVE_FLOOR := tests/test_hostile.py
AT_FLOOR := $(addprefix --ignore=,$(ABOVE_FLOOR))
IN_PLACE_HEAP := 128k

test: venv debian-packages
	$(BIN)/pytest -n auto
	POCKETPOST_TEST_HEAP=$(FLOOR_HEAP) $(BIN)/pytest -n auto $(AT_FLOOR)
	scripts/under-cpu-load sh -c 'POCKETPOST_TEST_CODE=in-place POCKETPOST_TEST_HEAP=$(IN_PLACE_HEAP) $(BIN)/pytest -n auto && for pass in 1 2; do POCKETPOST_TEST_HEAP=$(FLOOR_HEAP) $(BIN)/pytest -m memory $(AT_FLOOR) && $(BIN)/pytest -m memory $(ABOVE_FLOOR) && POCKETPOST_TEST_CODE=in-place POCKETPOST_TEST_HEAP=$(IN_PLACE_HEAP) $(BIN)/pytest -m memory || exit 1; done'

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

# `make memory`: the firmware's heap budget (bench/memory.py): after boot, per module, per client,
# per TLS session, per 1,000 messages, per console request, a 5 MB message, a soak of 10,000
# mixed sessions; MEMORY_OPTIONS=--write puts it into docs/memory.md.
MEMORY_OPTIONS ?=

memory: venv
	$(BIN)/python bench/memory.py $(MEMORY_OPTIONS)
