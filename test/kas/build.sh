#!/bin/sh
# Builds the test-only Kubernetes binaries into <repo>/bin:
#
#   sh build.sh            bin/kas only (what the tests in the main module use)
#   sh build.sh all        everything below
#   sh build.sh TARGET...  some of them:
#     kas      bin/kas: kube-apiserver (+ embedded etcd), kube-controller-manager,
#              kube-scheduler, kubelet, kube-proxy and kubectl in one binary
#     kubectl  bin/kubectl, a link to kas (builds kas)
#     e2e      bin/e2e.test, the upstream e2e suite (k8s.io/kubernetes/test/e2e)
#     ginkgo   bin/ginkgo, the ginkgo CLI the suite was written for (--procs)
#     agnhost  bin/agnhost, static (CGO_ENABLED=0), for the e2e test images
#     coredns  bin/coredns, static (go install github.com/coredns/coredns@VERSION)
#
# Every step is quick (seconds) when nothing changed: the go build cache
# holds the compiled packages, and go build, go test -c and go install do
# not re-link a binary whose build ID says it is up to date. Cold, on 2
# cores, kas and e2e.test take several minutes each.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$root/bin
k8s_version=v1.37.2
# CoreDNS v1.14.6 is what kubeadm v1.37.2 pins (CoreDNSVersion) and the
# image test/cluster/images packs this binary as
# (registry.k8s.io/coredns/coredns:v1.14.6). COREDNS_VERSION overrides it.
coredns_version=${COREDNS_VERSION:-v1.14.6}
version_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
cd "$here"
export GOWORK=off

build_kas() {
	go build -buildvcs=false -ldflags "$version_ldflags" -o "$bin/kas" .
}

build_kubectl() {
	build_kas
	ln -sf kas "$bin/kubectl"
}

build_e2e() {
	go test -c -buildvcs=false -ldflags "$version_ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e
}

build_ginkgo() {
	go build -buildvcs=false -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
}

build_agnhost() {
	CGO_ENABLED=0 go build -buildvcs=false -o "$bin/agnhost" k8s.io/kubernetes/test/images/agnhost
	# The porter's TLS ports serve this pair, which the image carries in /.
	mkdir -p "$bin/agnhost-porter"
	cp -f "$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)"/test/images/agnhost/porter/localhost.{crt,key} "$bin/agnhost-porter/"
	chmod 0644 "$bin"/agnhost-porter/*
}

# The boom server of the "invalid conntrack state" spec.
build_regression() {
	CGO_ENABLED=0 go build -buildvcs=false -o "$bin/regression-issue-74839" k8s.io/kubernetes/test/images/regression-issue-74839
}

build_coredns() {
	CGO_ENABLED=0 GOBIN=$bin go install "github.com/coredns/coredns@$coredns_version"
}

[ $# -gt 0 ] || set -- kas
targets=
for target; do
	case $target in
	all) targets="$targets kubectl e2e ginkgo agnhost regression coredns" ;;
	kas | kubectl | e2e | ginkgo | agnhost | regression | coredns) targets="$targets $target" ;;
	*)
		echo "build.sh: unknown target $target (want: all kas kubectl e2e ginkgo agnhost regression coredns)" >&2
		exit 2
		;;
	esac
done
for target in $targets; do
	"build_$target"
done
