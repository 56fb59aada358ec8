# laneguard: the few commands a new user needs. Each target installs what it needs on Debian 12.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Warnings as errors (.ci/run sets WERROR=ON; off for a user whose newer compiler warns more).
WERROR ?= OFF
DEBIAN_PACKAGES := cmake g++ make pkg-config libgtest-dev libgmock-dev libbenchmark-dev \
	nlohmann-json3-dev libcli11-dev clang-format libcurl4-openssl-dev nodejs
# Packages whose command may come from another package (NodeSource's nodejs ships npm): installed
# only when the command is missing, so an existing node/npm is never replaced.
DEBIAN_COMMANDS := npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Prometheus exposition (laneguard::prometheus) and the tools its interop tests run.
# Boost.Asio/Beast (libboost-dev) for its /metrics server; cpp-httplib for the tests' HTTP client.
DEBIAN_PACKAGES += prometheus-cpp-dev libboost-dev libcpp-httplib-dev prometheus \
	python3-prometheus-client
# script(1), for the test that runs `laneguard run` on a pseudo-terminal.
DEBIAN_PACKAGES += bsdutils

.PHONY: all deps configure build test demo demo-library bench bench-serve callgrind tsan tsan-build asan asan-build thread-safety format format-check tidy install clean

all: build

# Installs only what is missing, so repeated runs cost one dpkg query.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	for c in $(DEBIAN_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The benchmarks are not built here (their link-time optimized link is minutes of CI); `make bench`
# builds them, and `make thread-safety` compiles them.
test: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) \
	  -DLANEGUARD_BUILD_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The main job: an upgrade run through `laneguard batch`. Two of its jobs are meant to be stopped
# (one ignores SIGTERM and hangs, one grows past its memory limit), so exit status 1 (some jobs
# failed) is the expected result; anything else fails the target.
demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target laneguard_app  # the CLI only, not the tests
	@mkdir -p $(BUILD)/demo-work && rm -f $(BUILD)/demo-spans.jsonl $(BUILD)/demo-log.jsonl
	@status=0; $(BUILD)/bin/laneguard batch examples/upgrade-jobs.jsonl \
	  --config examples/config/production.json --spans $(BUILD)/demo-spans.jsonl \
	  --log $(BUILD)/demo-log.jsonl || status=$$?; \
	if [ $$status -ne 1 ]; then echo "demo: expected exit status 1, got $$status"; exit 1; fi; \
	echo; echo "demo: spans in $(BUILD)/demo-spans.jsonl ($$(wc -l < $(BUILD)/demo-spans.jsonl) lines), logs in $(BUILD)/demo-log.jsonl"

# The library-level demo: threads calling the wrappers directly across the five lanes.
demo-library: configure
	cmake --build $(BUILD) -j $(JOBS) --target laneguard_demo
	$(BUILD)/bin/laneguard_demo examples/config/production.json --log $(BUILD)/demo-library-log.jsonl \
	  --spans $(BUILD)/demo-library-spans.jsonl

BENCH_FLAGS := --benchmark_out_format=json --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
bench: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) \
	  -DLANEGUARD_BUILD_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)
	$(BUILD)/bin/laneguard_bench --benchmark_out=$(BUILD)/bench.json $(BENCH_FLAGS)

# The daemon under load (issue 19): laneguard serve against npm redis-semaphore on a local
# redis-server, 1/8/64 clients, and the hand-off latency; a markdown table (BENCHMARKS.md).
# SECONDS_PER_CASE (10) sets each case's measured window. Not part of `make test`.
bench-serve: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) \
	  -DLANEGUARD_BUILD_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target laneguard_app laneguard_serve_load
	bench/serve_load.sh $(BUILD)

# Instructions per call on the calling thread (valgrind's callgrind), for regressions: BENCHMARKS.md.
callgrind: deps
	dpkg-query -W valgrind >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq valgrind
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) \
	  -DLANEGUARD_BUILD_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target laneguard_callgrind_calls
	bench/callgrind.sh $(BUILD)

# clang's -Wthread-safety over the libraries, the CLI, the examples and the benchmarks: every
# GUARDED_BY and REQUIRES is checked, and a finding fails the target (warnings are errors here
# whatever WERROR says). It is also where CI compiles the benchmarks.
# Only clang's front end runs (-fsyntax-only on every command of the Debug configuration's compile
# database, cmake/syntax_only.py): the analysis and all of these warnings are front-end work, and
# the code generation and links of a full build were most of this target's CPU time and checked
# nothing more. (`make bench` links the benchmarks.)
thread-safety: deps
	dpkg-query -W clang-14 >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq clang-14
	CC=clang-14 CXX=clang++-14 cmake -S . -B build-tsa -DCMAKE_BUILD_TYPE=Debug -DLANEGUARD_LTO=OFF \
	  -DLANEGUARD_BUILD_TESTS=OFF -DLANEGUARD_BUILD_BENCH=ON -DLANEGUARD_WERROR=ON
	python3 cmake/syntax_only.py build-tsa $(JOBS)

# The sanitizer builds are for the tests; the benchmarks are not built there. Optimized at -O1
# (with debug information, NDEBUG as in RelWithDebInfo): the level the sanitizers' documentation
# recommends, and about a third less compile time than -O2 (prometheus_server.cc under TSan: 30 s
# of CPU at -O2, 20 s at -O1). `make tsan` is `make tsan-build`, then the tests: CI (.ci/run)
# builds ahead while other tests run.
SANITIZER_FLAGS = -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG" \
	-DLANEGUARD_BUILD_BENCH=OFF -DLANEGUARD_WERROR=$(WERROR)
tsan-build: deps
	cmake -S . -B build-tsan -DLANEGUARD_SANITIZE=thread $(SANITIZER_FLAGS)
	cmake --build build-tsan -j $(JOBS)

tsan: tsan-build
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" ctest --output-on-failure -j $(JOBS)

asan-build: deps
	cmake -S . -B build-asan -DLANEGUARD_SANITIZE=address,undefined $(SANITIZER_FLAGS)
	cmake --build build-asan -j $(JOBS)

asan: asan-build
	cd build-asan && ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="print_stacktrace=1" ctest --output-on-failure -j $(JOBS)

FORMAT_FILES = $(shell git ls-files '*.h' '*.cc' 2>/dev/null || find include src tests bench examples -name '*.h' -o -name '*.cc')

format: deps
	clang-format -i $(FORMAT_FILES)

format-check: deps
	clang-format --dry-run -Werror $(FORMAT_FILES)

# Static analysis (bugprone, concurrency, performance checks; see .clang-tidy) on the library sources.
# Every finding fails the target; a deliberate exception carries a NOLINT with its reason. (clang
# does not know GCC's fat LTO objects flag, which changes nothing it checks.)
# The compile database is the one of `make configure` (same options), in a directory of its own
# that is only configured, never built: tidy does not touch build/, so CI runs it next to the other
# stages. One file per clang-tidy process, so that the jobs stay balanced.
tidy: deps
	dpkg-query -W clang-tidy >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq clang-tidy
	cmake -S . -B build-tidy -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLANEGUARD_WERROR=$(WERROR) $(CMAKE_FLAGS)
	find src -name '*.cc' | sort | xargs -P $(JOBS) -n 1 clang-tidy -p build-tidy --quiet \
	  --warnings-as-errors='*' --extra-arg=-Wno-ignored-optimization-argument

install: build
	cmake --install $(BUILD)

clean:
	rm -rf build build-tsan build-asan build-tsa build-tidy
