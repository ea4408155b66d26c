package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/podnet/podnet/internal/cgroup"
)

// EBPFSandbox prepares an eBPF-dataplane agent run that touches nothing
// of the machine's: a throwaway cgroup v2 group (pnt-<unique>) that this
// test process joins, so that its own connections are the balancer's
// clients, and a private BPF file system for the pins. It returns the
// group's directory and the pin directory, for --bpf-cgroup and
// --bpf-pin-dir. Cleanups registered after this call (the agent's) run
// first; then the process leaves the group, which is removed with the
// file system. It skips the test, saying why, without cgroup v2.
func EBPFSandbox(t testing.TB) (cgroupDir, pinDir string) {
	t.Helper()
	root, err := cgroup.Root()
	if err != nil {
		t.Skipf("skipped: the eBPF dataplane needs a cgroup v2 hierarchy: %v", err)
	}
	cgroupDir = filepath.Join(root, "pnt-"+Unique())
	if err := os.Mkdir(cgroupDir, 0o755); err != nil {
		t.Fatal(err)
	}
	fsDir := t.TempDir()
	if err := syscall.Mount("bpf", fsDir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(cgroupDir)
		t.Fatalf("mount a private BPF file system: %v", err)
	}
	leave, err := cgroup.Join(cgroupDir)
	if err != nil {
		syscall.Unmount(fsDir, syscall.MNT_DETACH)
		os.Remove(cgroupDir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		leave()
		syscall.Unmount(fsDir, syscall.MNT_DETACH)
		os.Remove(cgroupDir)
	})
	return cgroupDir, filepath.Join(fsDir, "podnet")
}
