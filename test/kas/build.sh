#!/bin/sh
# Builds the test-only kube-apiserver/kube-proxy multi-call binary into
# <repo>/bin/kas. The go build cache makes it quick when nothing changed
# (the first build, with an empty cache, takes minutes).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
k8s_version=v1.37.2
cd "$here"
exec env GOWORK=off go build -buildvcs=false \
	-ldflags "-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
	-o "$root/bin/kas" .
