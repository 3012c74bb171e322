# meterlink entry points. Every target installs what it needs first (`setup` is idempotent).
#
#   make demo [DURATION=20]   the product on one machine: broker, gateway, six virtual nodes
#   make test                 the whole suite (MicroPython side, gateway, end to end)
#   make firmware             .mpy builds of firmware/ + drivers/ for xtensawin and rv32imc
#   make image BOARD=NAME     the node's MicroPython image, firmware frozen in: build/image/NAME/
#                             (needs ESP-IDF and a MicroPython checkout: docs/board-bringup.md)
#   make bench                every tests/bench/bench_*.py: figures against baselines measured in the same run
#   make fuzz [FUZZ_RUNS=N]   every decoder fuzzed with atheris for N inputs (1 000 000), one
#                             after another, a summary table, then the kept corpus
#                             (tests/fuzz/corpus/) minimised; tests/fuzz/run.py
#   make setup                venv, Mosquitto, MicroPython unix port (see host_tools/toolchain)

VENV      := .venv
PY        := $(VENV)/bin/python
DURATION  ?= 0
PYTEST_ARGS ?=
# The suite waits on real processes most of its time (a serial run uses a quarter of one of
# the two cores): three workers, each taking whole test files (module fixtures run once).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
FUZZ_RUNS ?= 1000000
# setup.sh installs the package with its `test` extra; the `fuzz` extra (atheris) is added
# here, again only when pyproject.toml changed since
FUZZ_STAMP := $(VENV)/.fuzz-extra
CONSTRAINTS := host_tools/toolchain/constraints.txt

.PHONY: setup test demo firmware image bench fuzz clean

setup:
	@bash host_tools/toolchain/setup.sh
	@[ $(FUZZ_STAMP) -nt pyproject.toml ] && [ $(FUZZ_STAMP) -nt $(CONSTRAINTS) ] || { \
		$(PY) -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) \
		-e '.[test,fuzz]' && touch $(FUZZ_STAMP); }

test: setup
	@bash host_tools/toolchain/setup.sh browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/meterlink demo --duration $(DURATION)

firmware: setup
	$(PY) -m host_tools.firmware_build --out build/firmware

# `image` needs the venv's Python and nothing else of `setup`, which it runs only when there is
# no venv yet. What the build needs is checked first (host_tools/image.py --check): a missing
# piece stops make through $(error), so it is that one line, not followed by make's own
# "*** [image] Error 1" line.
IMAGE_CHECK = $(shell $(PY) -m host_tools.image --check --board '$(BOARD)' 2>&1 >/dev/null)

image: $(PY)
	$(if $(IMAGE_CHECK),$(error $(IMAGE_CHECK)))
	@$(PY) -m host_tools.image --board '$(BOARD)' --out build/image

$(PY):
	@bash host_tools/toolchain/setup.sh

bench: setup
	@set -e; for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# The campaign goes on past a finding (tests/fuzz/run.py records it); the corpus is minimised
# even when a target stopped, and make fails then.
fuzz: setup
	@$(PY) tests/fuzz/run.py --all -runs=$(FUZZ_RUNS); status=$$?; \
		$(PY) tests/fuzz/run.py --merge --all && exit $$status

clean:
	rm -rf build demo-out .pytest_cache
