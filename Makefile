# podnet's build and test entry points. See README.md.
GO ?= go
# Debian packages the tests and benchmarks use: iptables for the portmap
# chaining test, iperf3 for throughput benchmarks, iproute2 and ping for
# poking around a lab.
DEB_PACKAGES := iproute2 iptables nftables iperf3 iputils-ping

.PHONY: build test deps lint demo bench

build:
	$(GO) build -o podnet ./cmd/podnet

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The whole suite. Root tests skip with a reason when not run as root.
test: lint
	$(GO) test -count=1 -timeout 20m ./...

demo: build
	./podnet lab demo

bench: build
	$(GO) run ./bench
