SHELL := /bin/bash
# ioatd — build, run and test. Every target installs the Debian packages it needs first.
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
APT_PACKAGES := libisal-dev libsystemd-dev pkg-config gcc python3
# Only the tests use these: strace delays one syscall to set up a race deterministically; the official
# Prometheus client parses `ioatctl metrics`; tmux runs `ioatctl top` in a real terminal; valgrind runs
# the C examples; g++ compiles the C headers as C++ (clang++ comes with Swift); binutils' nm and readelf check libioatd's exported symbols and soname.
TEST_PACKAGES := strace python3-prometheus-client tmux valgrind binutils g++
# The DPDK engine (SwiftPM trait DPDK) needs DPDK's headers, libraries and the dma_skeleton driver.
DPDK_PACKAGES := libdpdk-dev
DPDK_PMDS ?= $(firstword $(wildcard /usr/lib/*-linux-gnu/dpdk/pmds-*))
# EAL arguments for DPDK's software dmadev, for machines without I/OAT or DSA (deploy/HARDWARE.md).
SKELETON_EAL_ARGS ?= --no-huge --no-pci -m 256 --no-shconf --no-telemetry --file-prefix=ioatd \
	-d $(DPDK_PMDS)/librte_dma_skeleton.so --vdev=dma_skeleton
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-dpdk deps-test deps-systemd build build-dpdk release run run-dpdk test test-systemd test-c lib bench-c install-lib check-plain-build vectors fuzz clean

all: build

## deps: install the Debian packages that are missing (idempotent).
deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(APT_PACKAGES)"

## deps-dpdk: the same for the DPDK engine.
deps-dpdk: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DPDK_PACKAGES)"

## deps-test: the same for what only the tests use.
deps-test: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_PACKAGES)"

## deps-systemd: what `make test-systemd` needs to build a root file system and boot it.
deps-systemd: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="mmdebstrap systemd-container binutils"

install-packages:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## build: debug build of everything.
build: deps
	$(SWIFT) build

## build-dpdk: debug build with the DPDK engine (ioatd --engine dpdk).
build-dpdk: deps-dpdk
	$(SWIFT) build --traits DPDK

## release: optimised ioatd and ioatctl in .build/release.
release: deps
	$(SWIFT) build -c release --product ioatd
	$(SWIFT) build -c release --product ioatctl

## run: start ioatd in the foreground on its default socket with the CPU engine.
run: release
	.build/release/ioatd --engine cpu

## run-dpdk: the same with the DPDK engine on DPDK's software dmadev (dma_skeleton).
run-dpdk: deps-dpdk
	$(SWIFT) build -c release --traits DPDK --product ioatd
	.build/release/ioatd --engine dpdk --dpdk-eal-args "$(SKELETON_EAL_ARGS)"

## test: build with the DPDK engine and run every test (unit, kernel objects, whole processes, the
## conformance suite on dma_skeleton), after a short bounded fuzz run; the resource tests, which measure
## how long other tenants wait, and the bounded-wait tests, which check that a client gives up within its
## bound (the parallel run's blocked pool threads delay a test task by tens of seconds), and the shares of
## cgroup tenants (clients that wait for a CPU drain their queues), run alone after the rest and one at a time (--no-parallel: swift-testing
## would otherwise run the ring scribbler beside the latency tests); then check that a build without
## the DPDK trait neither needs nor links DPDK. A crash fails at once: the Swift backtracer is off (it
## can hang a crashed test process). On failure the recorded issues, and the tests a crash cut short,
## are repeated at the end, where a CI log's tail shows them. Processes the tests started and a crash
## left running are killed afterwards (they carry IOATD_TEST_RUN in their environment).
test: deps deps-dpdk deps-test
	$(MAKE) fuzz FUZZ_SECONDS=15
	$(SWIFT) build --build-tests --traits DPDK
	# The release server too: the allocation test of the event loop holds the optimised build to its contract.
	$(SWIFT) build -c release --product ioatd
	@mkdir -p .build
	IOATD_TEST_RUN=$$$$ SWIFT_BACKTRACE=enable=no timeout 1800 $(SWIFT) test --skip-build --traits DPDK --skip 'ResourceTests|RingAloneTests|BoundedWaitTests|ScopedTenantTests' 2>&1 \
			| tee .build/test-output.txt; \
		status=$${PIPESTATUS[0]}; \
		python3 Tests/support/reap.py $$$$; \
		if [ $$status -eq 0 ]; then \
			echo "---- make test: the resource tests and the ring tests that measure the process, alone ----"; \
			IOATD_TEST_RUN=$$$$ SWIFT_BACKTRACE=enable=no timeout 900 $(SWIFT) test --skip-build --traits DPDK --no-parallel --filter 'ResourceTests|RingAloneTests|BoundedWaitTests|ScopedTenantTests' 2>&1 \
				| tee -a .build/test-output.txt; \
			status=$${PIPESTATUS[0]}; \
			python3 Tests/support/reap.py $$$$; \
		fi; \
		if [ $$status -ne 0 ]; then \
			echo "---- make test: the failures above, repeated (exit $$status) ----"; \
			python3 Tests/support/test-failures.py .build/test-output.txt; \
		fi; \
		exit $$status
	$(MAKE) test-c
	$(MAKE) check-plain-build

## test-c: libioatd (Tests/libioatd/run.sh): installed into a staging root, the examples and the
## conformance program built against its pkg-config file and run against ioatd on both transports,
## again under AddressSanitizer and UndefinedBehaviorSanitizer, the examples under valgrind, and the
## exported symbols compared with the version script. Needs .build/debug/ioatd (make test builds it).
test-c: deps deps-test lib
	bash Tests/libioatd/run.sh

## test-systemd: the installed service under a real systemd as PID 1 (Tests/systemd/test-systemd.sh):
## a cached Debian 12 root, `make install` into a copy, systemd-nspawn --boot, and checks from inside.
## Fails, saying why, where no container can be booted.
test-systemd: deps deps-systemd
	bash Tests/systemd/test-systemd.sh

## check-plain-build: build ioatd without the DPDK trait in its own folder; it must link no DPDK library
## and refuse --engine dpdk with a clear message.
check-plain-build: deps
	$(SWIFT) build --scratch-path .build-plain --product ioatd
	@if ldd .build-plain/debug/ioatd | grep -q librte_; then echo "plain build links DPDK:"; ldd .build-plain/debug/ioatd | grep librte_; exit 1; fi
	@out=$$(.build-plain/debug/ioatd --engine dpdk --socket /tmp/ioatd-plain-$$$$.sock 2>&1); status=$$?; \
		if [ $$status -ne 2 ] || ! grep -q "built without it" <<< "$$out"; then echo "plain build: --engine dpdk gave $$status: $$out"; exit 1; fi
	@echo "plain build (no DPDK trait): links no DPDK library; --engine dpdk refused with exit 2"

## fuzz: libFuzzer for FUZZ_SECONDS each over the wire decoder and validator (seeded from
## protocol/vectors) and over the server's side of a ring queue, whose memory a hostile client rewrites
## between its steps. A crash leaves its input in .build/fuzz/crash-* (decoder: turn it into a vector in
## protocol/vectors/generate.py) or .build/fuzz/ring-crash-*.
FUZZ_SECONDS ?= 300
FUZZ_FLAGS = -O -sanitize=fuzzer,address -parse-as-library -module-name IOATProtocol -I Sources/CIOATRing/include
fuzz: deps
	mkdir -p .build/fuzz .build/fuzz/ring-corpus
	swiftc $(FUZZ_FLAGS) Sources/IOATProtocol/*.swift Tests/fuzz/FuzzDecode.swift -o .build/fuzz/fuzz-decode \
		2> .build/fuzz/build.log || { cat .build/fuzz/build.log; exit 1; }
	swiftc $(FUZZ_FLAGS) Sources/IOATProtocol/*.swift Tests/fuzz/FuzzRing.swift -o .build/fuzz/fuzz-ring \
		2> .build/fuzz/build-ring.log || { cat .build/fuzz/build-ring.log; exit 1; }
	python3 Tests/fuzz/seed.py .build/fuzz/corpus
	SWIFT_BACKTRACE=enable=no .build/fuzz/fuzz-decode -max_total_time=$(FUZZ_SECONDS) -max_len=65560 \
		-artifact_prefix=.build/fuzz/ -print_final_stats=1 .build/fuzz/corpus 2>&1 | grep -E '^(Done|stat::number_of_executed_units|==|SUMMARY|.*ERROR)' ; \
		test $${PIPESTATUS[0]} -eq 0
	SWIFT_BACKTRACE=enable=no .build/fuzz/fuzz-ring -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
		-artifact_prefix=.build/fuzz/ring- -print_final_stats=1 .build/fuzz/ring-corpus 2>&1 | grep -E '^(Done|stat::number_of_executed_units|==|SUMMARY|.*ERROR)' ; \
		test $${PIPESTATUS[0]} -eq 0

## lib: libioatd, the C client library: .build/libioatd/libioatd.so.1 (soname libioatd.so.1, only the
## symbols of libioatd/libioatd.map exported) and libioatd.a.
LIB_VERSION := $(shell sed -n 's/^\#define IOATD_LIB_VERSION_MAJOR //p' libioatd/include/ioatd/client.h).$(shell sed -n 's/^\#define IOATD_LIB_VERSION_MINOR //p' libioatd/include/ioatd/client.h)
LIB_MAJOR := $(firstword $(subst ., ,$(LIB_VERSION)))
LIB_CFLAGS ?= -O2 -g
LIB_FLAGS = -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -Ilibioatd/include -Iprotocol $(LIB_CFLAGS)
LIB_SOURCES := libioatd/client.c libioatd/ioat.c libioatd/ring.c
LIB_HEADERS := libioatd/include/ioatd/client.h libioatd/include/ioatd/ioat.h protocol/ioatd.h protocol/ioatd_ring.h
LIB_OUT := .build/libioatd
lib: $(LIB_OUT)/libioatd.so.$(LIB_VERSION) $(LIB_OUT)/libioatd.a

$(LIB_OUT)/%.o: libioatd/%.c $(LIB_HEADERS)
	@mkdir -p $(LIB_OUT)
	gcc $(LIB_FLAGS) -c $< -o $@

$(LIB_OUT)/libioatd.so.$(LIB_VERSION): $(LIB_SOURCES:libioatd/%.c=$(LIB_OUT)/%.o) libioatd/libioatd.map
	gcc -shared -Wl,-soname,libioatd.so.$(LIB_MAJOR) -Wl,--version-script=libioatd/libioatd.map -Wl,-z,defs \
		-o $@ $(filter %.o,$^) -lpthread
	ln -sf libioatd.so.$(LIB_VERSION) $(LIB_OUT)/libioatd.so.$(LIB_MAJOR)
	ln -sf libioatd.so.$(LIB_MAJOR) $(LIB_OUT)/libioatd.so

$(LIB_OUT)/libioatd.a: $(LIB_SOURCES:libioatd/%.c=$(LIB_OUT)/%.o)
	rm -f $@
	ar rcs $@ $^

## bench-c: libioatd's QD1 round trips and 64-byte batched ops/s beside the raw figures of `ioatctl
## bench`, on one release server in one run, as ratios (libioatd/bench.sh).
bench-c: release lib
	bash libioatd/bench.sh

## install-lib: libioatd, its headers (<ioatd/client.h>, <ioatd/ioat.h> beside <ioatd/ioatd.h> and
## <ioatd/ioatd_ring.h>) and libioatd.pc under $(DESTDIR)$(PREFIX).
install-lib: lib
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/ioatd
	install -m644 $(LIB_OUT)/libioatd.so.$(LIB_VERSION) $(LIB_OUT)/libioatd.a $(DESTDIR)$(LIBDIR)/
	ln -sf libioatd.so.$(LIB_VERSION) $(DESTDIR)$(LIBDIR)/libioatd.so.$(LIB_MAJOR)
	ln -sf libioatd.so.$(LIB_MAJOR) $(DESTDIR)$(LIBDIR)/libioatd.so
	install -m644 $(LIB_HEADERS) $(DESTDIR)$(INCLUDEDIR)/ioatd/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
		-e 's|@VERSION@|$(LIB_VERSION)|g' libioatd/libioatd.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/libioatd.pc

## vectors: regenerate protocol/vectors from the Python encoder.
vectors:
	python3 protocol/vectors/generate.py

clean:
	rm -rf .build

# ---- install -------------------------------------------------------------------------------------
BINDIR ?= $(PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
LIBDIR ?= $(PREFIX)/lib
UNITDIR ?= $(LIBDIR)/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/ioatd
SYSCONFDIR ?= /etc

.PHONY: install install-files install-lib
## install: optimised, self-contained binaries (Swift runtime linked in), units, snippets, header and
## pkg-config file under $(DESTDIR)$(PREFIX); the example config to $(SYSCONFDIR)/ioatd if none is there.
install: deps
	$(SWIFT) build -c release --static-swift-stdlib --product ioatd
	$(SWIFT) build -c release --static-swift-stdlib --product ioatctl
	$(MAKE) install-files

## install-files: what `install` installs, from the binaries already built. They must be self-contained:
## a binary that needs the Swift runtime of the toolchain (a plain `make release`) is refused.
install-files:
	@for b in ioatd ioatctl; do \
		if ldd .build/release/$$b | grep -q 'libswiftCore\|libFoundation'; then \
			echo "install-files: .build/release/$$b needs the Swift runtime of this toolchain:"; \
			ldd .build/release/$$b | grep 'libswift\|libFoundation'; \
			echo "build it with --static-swift-stdlib: run 'make install', not 'make release'"; exit 1; \
		fi; \
	done
	install -Dm755 -s .build/release/ioatd $(DESTDIR)$(BINDIR)/ioatd
	install -Dm755 -s .build/release/ioatctl $(DESTDIR)$(BINDIR)/ioatctl
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		deploy/ioatd.service.in > $(DESTDIR)$(UNITDIR)/ioatd.service
	install -m644 deploy/ioatd.socket $(DESTDIR)$(UNITDIR)/ioatd.socket
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		deploy/ioatd-metrics.service.in > $(DESTDIR)$(UNITDIR)/ioatd-metrics.service
	install -m644 deploy/ioatd-metrics.timer $(DESTDIR)$(UNITDIR)/ioatd-metrics.timer
	install -Dm644 deploy/sysusers.d/ioatd.conf $(DESTDIR)$(LIBDIR)/sysusers.d/ioatd.conf
	install -Dm644 deploy/tmpfiles.d/ioatd.conf $(DESTDIR)$(LIBDIR)/tmpfiles.d/ioatd.conf
	@# Opt-in: reserving hugepages at every boot is the administrator's choice (README).
	install -Dm644 deploy/sysctl.d/60-ioatd-hugepages.conf $(DESTDIR)$(DOCDIR)/examples/60-ioatd-hugepages.conf
	install -Dm644 protocol/ioatd.h $(DESTDIR)$(INCLUDEDIR)/ioatd/ioatd.h
	$(MAKE) --no-print-directory install-lib
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig
	sed -e 's|@PREFIX@|$(PREFIX)|g' deploy/ioatd.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/ioatd.pc
	install -Dm644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -Dm644 protocol/SPEC.md $(DESTDIR)$(DOCDIR)/SPEC.md
	install -Dm644 deploy/ioatd.toml $(DESTDIR)$(DOCDIR)/ioatd.toml.example
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/ioatd/ioatd.toml ]; then \
		install -Dm644 deploy/ioatd.toml $(DESTDIR)$(SYSCONFDIR)/ioatd/ioatd.toml; \
	else echo "kept existing $(DESTDIR)$(SYSCONFDIR)/ioatd/ioatd.toml"; fi
