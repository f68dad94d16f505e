# feedrank: `make demo` and `make test` are the two commands; the rest are for developers.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-out

.PHONY: demo test install spark redis-server browser goload locust protos bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $@

install: $(VENV)/.installed

# The Spark engine's extra (pyspark, about 450 MB): for the tests and `--engine spark`,
# not for the demo. It needs Java 17: tests/test_spark.py names the apt package when it
# is missing (a failure under CI=true, a skip otherwise).
$(VENV)/.spark-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[spark]'
	touch $@

spark: $(VENV)/.spark-installed

# Tests start their own redis-server processes; install the binary when it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# tests/test_explorer.py drives Debian's headless Chromium through its chromedriver;
# install both when either is missing (Selenium never downloads a browser here).
browser:
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { \
	  echo "installing chromium and chromium-driver"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# loadgen's compiled client (`--client go`, benchmarks/go_client.py) builds with Debian's
# Go and grpc-go; install both when either is missing.
goload:
	@command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/google.golang.org/grpc ] || { \
	  echo "installing golang-go and golang-google-grpc-dev"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq golang-go golang-google-grpc-dev >/dev/null; }

# Locust (benchmarks/locustfile.py) lives in an environment of its own: of the project it
# imports only the protos and benchmarks/likes_file.py, which need nothing beyond grpcio and
# protobuf; tests/test_loadgen.py runs the locustfile with it.
LOCUST_VENV ?= .venv-locust
$(LOCUST_VENV)/.installed:
	$(PYTHON) -m venv $(LOCUST_VENV)
	$(LOCUST_VENV)/bin/python -m pip install --quiet locust grpcio grpcio-health-checking protobuf
	touch $@

locust: $(LOCUST_VENV)/.installed

demo: install
	$(PY) -m serving demo --workdir $(DEMO_DIR)

# The suite runs on every core, up to 4 (pytest-xdist): each worker starts its own Redis
# servers on free ports. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: install spark redis-server browser goload locust
	FEEDRANK_LOCUST=$(CURDIR)/$(LOCUST_VENV)/bin/locust $(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --durations=25 $(PYTEST_ARGS)

protos: install
	$(PY) -m protos.generate

bench: install redis-server
	$(PY) -m pytest benchmarks --benchmark-enable -p no:cacheprovider

clean:
	rm -rf $(VENV) $(LOCUST_VENV) $(DEMO_DIR) .pytest_cache .benchmarks
