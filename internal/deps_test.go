package internal_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection enforces DESIGN.md's one-way dependencies: the
// CNI plugin starts fast because it never links client-go, and the pure
// and dataplane packages never know about the Kubernetes API.
func TestDependencyDirection(t *testing.T) {
	for _, pkg := range []string{"ipam", "cni", "routing", "model", "netpol", "proxy", "dataplane/link", "dataplane/nft", "dataplane/nflog", "netns"} {
		out, err := exec.Command("go", "list", "-deps", "github.com/podnet/podnet/internal/"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "k8s.io/") {
				t.Errorf("internal/%s depends on %s", pkg, dep)
			}
		}
	}
}
