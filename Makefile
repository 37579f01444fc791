# kiosk-agent: the two front-door commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
COUNT  ?= 20

.PHONY: demo test deps-demo deps-test mosquitto systemd-tools python-venv apt-python3-venv schema lint \
        clean install uninstall

demo: deps-demo
	$(BIN)/kiosk-agent demo --count $(COUNT)

test: deps-test mosquitto systemd-tools
	$(BIN)/python -m pytest

lint: deps-test
	$(BIN)/ruff check agent drivers tests

# Regenerate the JSON Schema editors use to validate config files.
schema: deps-demo
	$(BIN)/kiosk-agent config-schema > config/agent.schema.json

deps-demo: $(VENV)/.installed-demo
deps-test: $(VENV)/.installed-test

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $@ $(VENV)/.installed-demo

$(BIN)/python: | python-venv
	$(PYTHON) -m venv $(VENV)

# Debian ships venv support in a separate package; Python must be 3.11 or newer.
python-venv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "kiosk-agent needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	         "Set PYTHON=python3.11 (or newer)."; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory apt-python3-venv

apt-python3-venv:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing python3-venv with apt-get"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	else \
	  echo "Python's venv module is missing: run 'sudo apt-get install python3-venv', then this command again."; \
	  exit 1; \
	fi

# The tests start their own mosquitto on a free loopback port; it only has to be installed.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing mosquitto with apt-get"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; \
	else \
	  echo "mosquitto is missing: run 'sudo apt-get install mosquitto', then 'make test' again."; \
	  exit 1; \
	fi

# The tests run `systemd-analyze verify` on the units.
systemd-tools:
	@if command -v systemd-analyze >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing systemd (for systemd-analyze) with apt-get"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd; \
	else \
	  echo "systemd-analyze is missing: run 'sudo apt-get install systemd', then 'make test' again."; \
	  exit 1; \
	fi

# sudo make install: user kiosk, /opt/kiosk-agent, units, udev rules, a default config.
# DESTDIR=/some/root stages the files there instead (no users, no systemctl).
install:
	DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" PIP_ARGS="$(PIP_ARGS)" sh systemd/install.sh install

uninstall:
	DESTDIR="$(DESTDIR)" sh systemd/install.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
