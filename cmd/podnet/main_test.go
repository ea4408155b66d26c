package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/testenv"
)

// TestCNIPathSkipsKubernetesInit proves internal/cnimain's promise: when
// the binary runs as a CNI plugin, client-go's expensive initializers never
// run.
func TestCNIPathSkipsKubernetesInit(t *testing.T) {
	bin := filepath.Join(testenv.Binaries(t), "podnet")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION", "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("VERSION: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"supportedVersions"`) {
		t.Fatalf("no VERSION answer:\n%s", out)
	}
	for _, heavy := range []string{"k8s.io/client-go/kubernetes/scheme", "k8s.io/api/core/v1 ", "k8s.io/client-go/kubernetes/fake"} {
		if strings.Contains(string(out), "init "+heavy) {
			t.Errorf("the CNI path ran %s's initializer", heavy)
		}
	}
	// And without CNI_COMMAND the binary is the CLI.
	out, err = exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "podnet ") {
		t.Fatalf("podnet version: %v %s", err, out)
	}
}
