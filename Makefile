# meterlink entry points. Every target installs what it needs first (`setup` is idempotent).
#
#   make demo [DURATION=20]   the product on one machine: broker, gateway, three virtual nodes
#   make test                 the whole suite (MicroPython side, gateway, end to end)
#   make firmware             .mpy builds of firmware/ + drivers/ for xtensawin and rv32imc
#   make bench                every tests/bench/bench_*.py: figures against baselines measured in the same run
#   make setup                venv, Mosquitto, MicroPython unix port (see host_tools/toolchain)

VENV      := .venv
PY        := $(VENV)/bin/python
DURATION  ?= 0
PYTEST_ARGS ?=

.PHONY: setup test demo firmware bench clean

setup:
	@bash host_tools/toolchain/setup.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/meterlink demo --duration $(DURATION)

firmware: setup
	$(PY) -m host_tools.firmware_build --out build/firmware

bench: setup
	@set -e; for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf build demo-out .pytest_cache
