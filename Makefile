# podnet's build and test entry points. See README.md.
GO ?= go
# Debian packages the tests and benchmarks use: iptables for the portmap
# chaining test, iperf3 for throughput benchmarks, iproute2 and ping for
# poking around a lab; chromium for the web view's test; clang, llvm and
# libbpf-dev to check the committed eBPF objects against bpf/.
DEB_PACKAGES := iproute2 iptables nftables iperf3 iputils-ping chromium clang llvm libbpf-dev

.PHONY: build test deps lint bpf bpf-check demo bench kas cluster-build e2e-smoke e2e-netpol e2e-connectivity e2e-full cluster-down

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

# The eBPF objects are generated from bpf/ (clang, bpf2go) and committed,
# so that building podnet needs no clang; bpf-check fails when they do not
# match the sources.
bpf:
	$(GO) generate ./internal/dataplane/ebpf

bpf-check: bpf
	@git diff --exit-code --stat -- internal/dataplane/ebpf || { echo "the committed eBPF objects are stale: run make bpf and commit"; exit 1; }

# A real kube-apiserver (with embedded etcd) and kube-proxy, built from the
# k8s.io/kubernetes module in test/kas, for the agent's integration tests.
# The first build takes several minutes; later ones are seconds.
kas:
	bash test/kas/build.sh

# The whole suite. Root tests skip with a reason when not run as root.
test: lint bpf-check kas
	$(GO) test -count=1 -timeout 20m ./...

demo: build
	./podnet lab demo

bench: build
	$(GO) run ./bench

# A real Kubernetes cluster in network namespaces (kubelet, containerd,
# CoreDNS, podnet installed from deploy/) and the upstream sig-network e2e
# suite. cluster-build compiles the Kubernetes binaries, e2e.test, ginkgo,
# agnhost and CoreDNS (minutes the first time) and packs the test images.
# Debian packages the cluster needs: containerd and runc on every node, and
# the tools packed into the test images (test/cluster/images).
CLUSTER_PACKAGES := containerd runc bash dash bind9-dnsutils bind9-host netcat-openbsd curl wget socat iperf \
	iproute2 iputils-ping libc-bin nginx nftables conntrack iptables ipset gawk mawk procps grep sed findutils hostname

cluster-build: deps
	@missing=""; for p in $(CLUSTER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	bash test/kas/build.sh all
	$(GO) build -o bin/ ./cmd/podnet github.com/containernetworking/plugins/plugins/main/loopback github.com/containernetworking/plugins/plugins/meta/portmap
	$(GO) run ./test/cluster/images/cmd/mkimages -out bin/images -agnhost bin/agnhost -coredns bin/coredns -podnet bin/podnet -regression-issue-74839 bin/regression-issue-74839

# PROXY=podnet runs the cluster without kube-proxy, podnet proxying Services.
PROXY ?= kube-proxy

e2e-smoke: cluster-build
	$(GO) run ./test/cluster/cmd/cluster e2e --selection smoke --proxy $(PROXY)

# The upstream NetworkPolicy suite with podnet enforcing it (POLICY=none
# runs it without enforcement, to see the specs fail).
POLICY ?= podnet

e2e-netpol: cluster-build
	$(GO) run ./test/cluster/cmd/cluster e2e --selection netpol --procs 4 --nodes 3 --proxy $(PROXY) --policy $(POLICY)

# podnet connectivity test against a real 2-node cluster (podnet as CNI,
# proxy and policy).
e2e-connectivity: cluster-build
	$(GO) run ./test/cluster/cmd/cluster connectivity --nodes 2 --proxy podnet --policy podnet

e2e-full: cluster-build
	$(GO) run ./test/cluster/cmd/cluster e2e --selection full --procs 4 --nodes 3 --proxy $(PROXY)

cluster-down:
	$(GO) run ./test/cluster/cmd/cluster down
