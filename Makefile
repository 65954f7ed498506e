# smtpguard - one non-recursive Makefile.
#
#   make              build policyd/smtpguard (CC=clang make works too)
#   make check        cmocka unit tests
#   make integration  tests against real redis-server and a real Postfix
#   make test         everything CI runs: gcc + clang builds, unit,
#                     integration, the suite again under ASan+UBSan, fuzzers
#   make asan         build the ASan+UBSan variant into build/asan
#   make fuzz         build the libFuzzer targets (clang) into build/fuzz
#   make bench        the benchmark matrix (scripts/bench; BENCH_ARGS="--quick" or sections)
#   make install PREFIX=/usr/local DESTDIR=
#
# Objects go to build/<variant>/; the daemon of the default variant is
# linked to policyd/smtpguard.

VARIANT ?= release
CC      ?= cc
PKGS    := libuv hiredis libcares yaml-0.1 libpcre2-8
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS)) -lm
CMOCKA_LIBS := $(shell pkg-config --libs cmocka)

WARN    := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
           -Wshadow -Wformat=2 -Wwrite-strings -fno-common
BASEFLAGS := -std=c11 -D_DEFAULT_SOURCE $(WARN) $(PKG_CFLAGS) -Ipolicyd -Ibuild/$(VARIANT)/gen

ifeq ($(VARIANT),asan)
OPTFLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDSAN    := -fsanitize=address,undefined
else
OPTFLAGS := -O2 -g
LDSAN    :=
endif
CFLAGS  ?=
CFLAGS  += $(BASEFLAGS) $(OPTFLAGS)
LDFLAGS += $(LDSAN)

B := build/$(VARIANT)

# Everything but main.c goes into libpolicyd.a.
SRCS += policyd/xalloc.c
SRCS += policyd/log.c
SRCS += policyd/ascii.c
SRCS += policyd/request.c
SRCS += policyd/protocol.c
SRCS += policyd/cidr.c
SRCS += policyd/list.c
SRCS += policyd/decay.c
SRCS += policyd/template.c
SRCS += policyd/config.c
SRCS += policyd/rules.c
SRCS += policyd/actions.c
SRCS += policyd/textbuf.c
SRCS += policyd/track.c
SRCS += policyd/dedup.c
SRCS += policyd/alertmsg.c
SRCS += policyd/smtpc.c
SRCS += policyd/redisaux.c
SRCS += policyd/alert.c
SRCS += policyd/followup.c
SRCS += policyd/engine.c
SRCS += policyd/dnsname.c
SRCS += policyd/dnscache.c
SRCS += policyd/dns.c
SRCS += policyd/store.c
SRCS += policyd/sha1.c
SRCS += policyd/store_memory.c
SRCS += policyd/replyarena.c
SRCS += policyd/respconn.c
SRCS += policyd/counter_wire.c
SRCS += policyd/store_redis.c
SRCS += policyd/conn.c
SRCS += policyd/unixsock.c
SRCS += policyd/listener.c
SRCS += policyd/server.c
SRCS += policyd/workers.c
SRCS += policyd/metrics.c
SRCS += policyd/record.c
SRCS += policyd/admin.c
SRCS += policyd/explain.c
SRCS += policyd/replay.c

OBJS := $(SRCS:%.c=$(B)/%.o)
LIB  := $(B)/libpolicyd.a
BIN  := $(B)/smtpguard

# The load generator (test/bench/sgload.c): libuv only, built with the daemon
# so both compilers check it.
SGLOAD := $(B)/sgload

UNIT_SRCS := $(wildcard test/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:test/unit/%.c=$(B)/unit/%)

.PHONY: all check integration test asan fuzz bench install clean
# Only the default variant is linked to policyd/smtpguard; the others
# (VARIANT=asan, VARIANT=clang ...) stay in build/<variant>/.
ifeq ($(VARIANT),release)
all: policyd/smtpguard $(SGLOAD)
else
all: $(BIN) $(SGLOAD)
endif

policyd/smtpguard: $(BIN)
	ln -sf ../$(BIN) $@

$(B)/gen/store_redis_lua.h: policyd/store_redis.lua scripts/embed-text
	@mkdir -p $(dir $@)
	sh scripts/embed-text store_redis_lua $< > $@.tmp && mv $@.tmp $@

$(B)/policyd/store_redis.o: $(B)/gen/store_redis_lua.h
$(B)/test/integration/test_store_redis.o: $(B)/gen/store_redis_lua.h

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(OBJS)
	rm -f $@
	ar rcs $@ $^

$(BIN): $(B)/policyd/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(SGLOAD): $(B)/test/bench/sgload.o
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs libuv) -lm

# Unit tests: each test_<module>.c links the archive; fakes, if any,
# come before it so the real member is never pulled in.
$(B)/unit/%: $(B)/test/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA_LIBS)

$(B)/test/unit/%.o: CFLAGS += -Itest/unit

check: $(UNIT_BINS)
	@sh scripts/run-unit $(UNIT_BINS)

integration: $(BIN) $(B)/itest/test_store_redis
	scripts/with-redis $(B)/itest/test_store_redis
	python3 test/run.py --bin $(BIN)

$(B)/itest/test_store_redis: $(B)/test/integration/test_store_redis.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA_LIBS)

test:
	bash scripts/test-all

asan:
	$(MAKE) VARIANT=asan all check

fuzz:
	$(MAKE) -f test/fuzz/Makefile.fuzz

bench: all
	bash scripts/bench $(BENCH_ARGS)

PREFIX     ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
DESTDIR    ?=
# make install PREFIX=/usr SYSCONFDIR=/etc for a system-wide install.
install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(SYSCONFDIR)/smtpguard/rules.d \
	    $(DESTDIR)$(PREFIX)/share/smtpguard/contrib $(DESTDIR)$(PREFIX)/share/doc/smtpguard
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/smtpguard
	install -m 0755 scripts/smtpguardctl $(DESTDIR)$(PREFIX)/sbin/smtpguardctl
	install -m 0644 smtpguard.yaml.example $(DESTDIR)$(SYSCONFDIR)/smtpguard/smtpguard.yaml.example
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/smtpguard/README.md
	# The rule sets are live configuration (rules.d/*.yaml is loaded): a
	# first install puts the examples there; later ones leave what the
	# operator tuned or deleted alone. The shipped sets are always in
	# share/doc/smtpguard/rules.d, to compare with.
	install -d $(DESTDIR)$(PREFIX)/share/doc/smtpguard/rules.d/inbound \
	    $(DESTDIR)$(SYSCONFDIR)/smtpguard/rules.d/inbound
	install -m 0644 rules.d/*.yaml $(DESTDIR)$(PREFIX)/share/doc/smtpguard/rules.d/
	install -m 0644 rules.d/inbound/*.yaml $(DESTDIR)$(PREFIX)/share/doc/smtpguard/rules.d/inbound/
	@if ls $(DESTDIR)$(SYSCONFDIR)/smtpguard/rules.d/*.yaml >/dev/null 2>&1; then \
	    echo "install: $(SYSCONFDIR)/smtpguard/rules.d holds rules already: left as they are" \
	        "(the shipped ones: $(PREFIX)/share/doc/smtpguard/rules.d)"; \
	else \
	    install -m 0644 rules.d/*.yaml $(DESTDIR)$(SYSCONFDIR)/smtpguard/rules.d/ && \
	    install -m 0644 rules.d/inbound/*.yaml $(DESTDIR)$(SYSCONFDIR)/smtpguard/rules.d/inbound/; \
	fi
	cp -R contrib/. $(DESTDIR)$(PREFIX)/share/smtpguard/contrib/
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 scripts/smtpguard-log $(DESTDIR)$(PREFIX)/bin/smtpguard-log

clean:
	rm -rf build policyd/smtpguard

-include $(OBJS:.o=.d) $(B)/policyd/main.d $(B)/test/bench/sgload.d $(UNIT_SRCS:test/unit/%.c=$(B)/test/unit/%.d)
.SECONDARY:
