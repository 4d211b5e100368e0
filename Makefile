# ioatd — build, run and test. Every target installs the Debian packages it needs first.
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
APT_PACKAGES := libisal-dev libsystemd-dev pkg-config gcc python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build release run test vectors clean

all: build

## deps: install the Debian packages that are missing (idempotent).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## build: debug build of everything.
build: deps
	$(SWIFT) build

## release: optimised ioatd and ioatctl in .build/release.
release: deps
	$(SWIFT) build -c release --product ioatd
	$(SWIFT) build -c release --product ioatctl

## run: start ioatd in the foreground on its default socket with the CPU engine.
run: release
	.build/release/ioatd --engine cpu

## test: build and run every test (unit, kernel objects, whole processes).
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test

## vectors: regenerate protocol/vectors from the Python encoder.
vectors:
	python3 protocol/vectors/generate.py

clean:
	rm -rf .build
