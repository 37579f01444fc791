# kiosk-agent: the two front-door commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
COUNT  ?= 20

.PHONY: demo test deps-demo deps-test deps-bench mosquitto systemd-tools fault-tools postgres python-venv schema lint \
        clean install uninstall

demo: deps-demo
	$(BIN)/kiosk-agent demo --count $(COUNT)

test: libfprint-tools deps-test mosquitto systemd-tools fault-tools postgres browser
	$(BIN)/python -m pytest

# The long profiles: hundreds of kills and power cuts, full-size fleets, the full update bundle.
.PHONY: soak
soak:
	KIOSK_AGENT_SOAK=1 $(MAKE) test

lint: deps-test
	$(BIN)/ruff check agent drivers receiver devtools cli tests bench

# Regenerate the JSON Schema editors use to validate config files.
schema: deps-demo
	$(BIN)/kiosk-agent config-schema > config/agent.schema.json

# Regenerate shell completion (bash, zsh) and the man page in share/ from the command line's
# parser (a test checks they match it); `make install` installs them.
.PHONY: cli-docs
cli-docs: deps-test
	$(BIN)/python -m devtools.cli_docs

# Regenerate the local API's OpenAPI document (a test checks it matches the routes).
.PHONY: openapi
openapi: deps-demo
	$(BIN)/python -c 'import json; from agent.registration.openapi import spec; print(json.dumps(spec(), indent=2))' > docs/openapi.json

# Benchmarks against the raw libraries (docs/performance.md): quick sizes, or FULL=1 for the
# full ones. Writes bench/last-run.json and the generated section of docs/performance.md.
# The central steps (bench/fleet.py, bench/central_ingest.py) store into a scratch database on
# the PostgreSQL server `postgres` starts, through psycopg (the `central` extra: deps-bench);
# no test tools.
.PHONY: bench
bench: deps-bench mosquitto postgres
	$(BIN)/python -m bench.run $(if $(filter 1,$(FULL)),--full)

deps-demo: $(VENV)/.installed-demo
deps-test: $(VENV)/.installed-test
deps-bench: $(VENV)/.installed-bench

# mediapipe (the face mesh's model files) comes last and without its declared dependencies: why
# in requirements-nodeps.txt. pip skips
# the line where its markers do not match (no wheel for that platform or Python).
$(VENV)/.installed-demo: pyproject.toml requirements-nodeps.txt | $(BIN)/python
	@echo "kiosk-agent: installing into $(VENV) with pip (a minute or so the first time; quiet unless it fails)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,landmarks]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# The demo's packages and psycopg for the benchmarks' central steps.
$(VENV)/.installed-bench: pyproject.toml requirements-nodeps.txt | $(BIN)/python
	@echo "kiosk-agent: installing into $(VENV) with pip, the benchmarks' psycopg too (a minute or so the first time)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,landmarks,central]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@ $(VENV)/.installed-demo

# libfprint-tools first: the test extra builds PyGObject against Debian's libgirepository.
# The test extra includes the landmarks and central extras.
$(VENV)/.installed-test: pyproject.toml requirements-nodeps.txt | $(BIN)/python libfprint-tools
	@echo "kiosk-agent: installing into $(VENV) with pip, test tools too (a minute or two the first time)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@ $(VENV)/.installed-demo $(VENV)/.installed-bench

$(BIN)/python: | python-venv
	@echo "kiosk-agent: creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)

# Debian ships venv support in a separate package; Python must be 3.11 or newer.
python-venv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "kiosk-agent needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	         "Set PYTHON=python3.11 (or newer)."; exit 1; }
	@sh scripts/ensure-package.sh "$(PYTHON) -c 'import ensurepip, venv'" python3-venv "Python's venv module"

# The tests start their own mosquitto on a free loopback port; it only has to be installed.
# The operator console's tests drive Debian's Chromium headless through its chromedriver
# (tests/console/); the Noto fonts draw its Urdu pages (and the screenshots in docs/console/).
.PHONY: browser
browser:
	@sh scripts/ensure-package.sh "test -x /usr/bin/chromium" chromium "the console's browser tests"
	@sh scripts/ensure-package.sh "test -x /usr/bin/chromedriver" chromium-driver "the console's browser tests"
	@sh scripts/ensure-package.sh "test -f /usr/share/fonts/truetype/noto/NotoNastaliqUrdu-Regular.ttf" \
	  fonts-noto-core "Urdu text on the console's pages"

# Screenshots of every console page, English and Urdu, 800x480 and 1366x768 (docs/console.md).
.PHONY: console-screenshots
console-screenshots: deps-test mosquitto browser
	$(BIN)/python -m tests.console.screenshots

mosquitto:
	@sh scripts/ensure-package.sh "command -v mosquitto || test -x /usr/sbin/mosquitto" mosquitto \
	  "the tests start their own brokers"

# The central store's tests (tests/central/) need a PostgreSQL server that lets user postgres
# in without a password on 127.0.0.1: the machine's own on port 5432 where it does, else (as
# Debian's asks for a password) a loopback-only test cluster the script makes on port 54329,
# leaving the machine's own pg_hba.conf alone; each test makes and drops a database of its own.
postgres:
	@sh scripts/ensure-package.sh "command -v pg_lsclusters" postgresql \
	  "the central store's tests (tests/central) and benchmarks (bench/fleet.py, bench/central_ingest.py)"
	@sh scripts/start-postgres.sh

# libfprint and what PyGObject builds against, for the libfprint driver's tests
# (tests/drivers/test_libfprint.py): gir1.2-fprint-2.0 brings libfprint-2-2; bookworm has no
# girepository-2.0, hence PyGObject below 3.51 from PyPI (the libfprint extra) built with the
# 1.0 headers, since the venv's Python need not be Debian's (python3-gi serves only that one).
.PHONY: libfprint-tools
libfprint-tools:
	@sh scripts/ensure-package.sh "command -v pkg-config" pkg-config "PyGObject's build finds the libraries with it"
	@sh scripts/ensure-package.sh "test -e /usr/lib/$$(uname -m)-linux-gnu/girepository-1.0/FPrint-2.0.typelib" \
	  gir1.2-fprint-2.0 "libfprint for the libfprint driver's tests"
	@sh scripts/ensure-package.sh "pkg-config --exists gobject-introspection-1.0" libgirepository1.0-dev \
	  "PyGObject builds against it"
	@sh scripts/ensure-package.sh "pkg-config --exists cairo" libcairo2-dev "PyGObject's cairo support builds against it"

# The tests run `systemd-analyze verify` on the units.
systemd-tools:
	@sh scripts/ensure-package.sh "command -v systemd-analyze" systemd "for systemd-analyze"

# What the fault tests build real faults from (tests/reliability/): power cuts, network profiles.
fault-tools:
	@sh scripts/ensure-package.sh "command -v ip" iproute2 "network namespaces for the network profiles"
	@sh scripts/ensure-package.sh "command -v nft || test -x /usr/sbin/nft" nftables "loss, black holes and NAT for the network profiles"
	@sh scripts/ensure-package.sh "command -v fusermount3" fuse3 "crashfs, the power-loss harness (tests/support/crashfs)"

# sudo make install: a kiosk: user kiosk, /opt/kiosk-agent, the agent's unit, udev rules, a
# default config, the kiosk key, the local API token. sudo make install-central: the reference
# receiver's unit and config instead (a central machine). DESTDIR=/some/root stages the files
# there (no users, no systemctl), the scripts rewritten to run from /opt/kiosk-agent.
install:
	DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" PIP_ARGS="$(PIP_ARGS)" sh systemd/install.sh install

.PHONY: install-central
install-central:
	DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" PIP_ARGS="$(PIP_ARGS)" sh systemd/install.sh install-central

uninstall:
	DESTDIR="$(DESTDIR)" sh systemd/install.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
