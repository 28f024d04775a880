# portman: build the C core (portman/core.so), test, bench, install.
# Variables follow LuaRocks' conventions so `luarocks make` can drive it too.

LUA_VERSION ?= 5.4
PKG_CONFIG  ?= pkg-config
PREFIX      ?= /usr/local
DESTDIR     ?=
INST_LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INST_LUADIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
INST_BINDIR ?= $(PREFIX)/bin
INST_MANDIR ?= $(PREFIX)/share/man
INST_COMPDIR ?= $(PREFIX)/share/bash-completion/completions
LIBFLAG     ?= -shared
CFLAGS      ?= -O2

# The libraries the core links (libnatpmp ships no .pc file); the same as the
# rockspec's external_dependencies.
LIBPKGS     := libcares miniupnpc libcrypto libcurl libidn2
PKGS        := lua$(LUA_VERSION) $(LIBPKGS)
PKG_CFLAGS   = $(shell $(PKG_CONFIG) --cflags $(PKGS))
# A Lua module never links liblua: the interpreter provides its symbols.
PKG_LIBS     = $(shell $(PKG_CONFIG) --libs $(LIBPKGS)) -lnatpmp -lresolv -lpthread
# No -fvisibility=hidden: the sources hide their symbols (csrc/visibility.h),
# so this build exports what the rock's does, and the build spec checks both.
STRICT      := -std=c11 -Wall -Wextra -Werror -fPIC -D_GNU_SOURCE
SAN_FLAGS   := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

SRCS    := $(wildcard csrc/*.c)
HDRS    := $(wildcard csrc/*.h)
OBJS    := $(SRCS:csrc/%.c=build/obj/%.o)
SANOBJS := $(SRCS:csrc/%.c=build-asan/obj/%.o)

.PHONY: docs all deps deps-run deps-test deps-bench deps-fuzz test lint spec spec-asan rock-smoke rockspec \
	bench run install clean fuzz

all: build/portman/core.so

build/obj/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(STRICT) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

build/portman/core.so: $(OBJS)
	@mkdir -p $(@D)
	$(CC) $(LIBFLAG) $(CFLAGS) -o $@ $(OBJS) $(PKG_LIBS)

build-asan/obj/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(STRICT) $(SAN_FLAGS) $(PKG_CFLAGS) -c $< -o $@

build-asan/portman/core.so: $(SANOBJS)
	@mkdir -p $(@D)
	$(CC) $(LIBFLAG) $(SAN_FLAGS) -o $@ $(SANOBJS) $(PKG_LIBS)

# The sanitizer specs run under an interpreter linked with the sanitizers.
build-asan/lua5.4: spec/support/sanlua.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror $(SAN_FLAGS) $(shell $(PKG_CONFIG) --cflags lua$(LUA_VERSION)) $< -o $@ \
		$(shell $(PKG_CONFIG) --libs lua$(LUA_VERSION))

# `make deps` installs every package; each use below installs only its own.
deps:
	@scripts/deps all
deps-run deps-test deps-bench deps-fuzz:
	@scripts/deps $(@:deps-%=%)

lint:
	luacheck -q lua spec examples bench bin fuzz

spec: build/portman/core.so
	scripts/run-specs plain

# Leaks are reported at exit (LeakSanitizer).
spec-asan: build-asan/portman/core.so build-asan/lua5.4
	scripts/run-specs asan

rock-smoke:
	scripts/rock-smoke

# Rewrites the rockspec's list of Lua modules from lua/portman (every file,
# in subdirectories too).
rockspec:
	scripts/rockspec-modules

test: deps-test
	$(MAKE) all build-asan/portman/core.so build-asan/lua5.4
	$(MAKE) lint
	$(MAKE) rock-smoke
	scripts/run-specs all

bench: deps-bench
	$(MAKE) all
	$(MAKE) -C bench
	scripts/bench

run: deps-run
	$(MAKE) all
	bin/portman run examples/default.lua

fuzz: deps-fuzz
	$(MAKE) all
	$(MAKE) -C fuzz

install: all
	install -d $(DESTDIR)$(INST_LIBDIR)/portman $(DESTDIR)$(INST_BINDIR)
	install -m 0755 build/portman/core.so $(DESTDIR)$(INST_LIBDIR)/portman/core.so
	find lua/portman -name '*.lua' | while read -r f; do \
		install -D -m 0644 "$$f" "$(DESTDIR)$(INST_LUADIR)/$${f#lua/}" || exit 1; done
	install -m 0755 bin/portman $(DESTDIR)$(INST_BINDIR)/portman
	install -D -m 0644 doc/portman.1 $(DESTDIR)$(INST_MANDIR)/man1/portman.1
	install -D -m 0644 doc/portman.bash $(DESTDIR)$(INST_COMPDIR)/portman

# The man page and bash completion, from the command specs (portman.cmd.doc).
docs: all
	scripts/gen-doc

clean:
	rm -rf build build-asan
	-$(MAKE) -C bench clean
	-$(MAKE) -C fuzz clean
