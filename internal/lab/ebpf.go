package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cgroup"
)

// A lab with the eBPF dataplane. Every node of the lab lives in this one
// process, so the socket balancer cannot tell nodes apart by cgroup: the
// lab moves itself into a cgroup of its own (so that nothing else on the
// machine is seen by the programs), every node's agent attaches its
// programs there, and each agent serves only the network namespaces of
// its node and its pods, by netns cookie. The pins live in a private BPF
// file system under the lab's directory.

func cgroupDir(name string) (string, error) {
	root, err := cgroup.Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "pnl-"+name), nil
}

func bpfDir(name string) string { return filepath.Join(Dir(name), "bpf") }

// enterEBPF makes the lab's cgroup and BPF file system and moves this
// process into the cgroup. It returns what to undo.
func (l *Lab) enterEBPF() (func(), error) {
	cg, err := cgroupDir(l.opt.Name)
	if err != nil {
		return nil, fmt.Errorf("lab: the eBPF dataplane needs cgroup v2: %w", err)
	}
	if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("lab: cgroup: %w", err)
	}
	leave, err := cgroup.Join(cg)
	if err != nil {
		os.Remove(cg)
		return nil, fmt.Errorf("lab: move into cgroup %s: %w", cg, err)
	}
	undo := func() {
		leave()
		os.Remove(cg)
	}
	dir := bpfDir(l.opt.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		undo()
		return nil, err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		undo()
		return nil, fmt.Errorf("lab: mount a BPF file system: %w", err)
	}
	return func() {
		unix.Unmount(dir, unix.MNT_DETACH)
		undo()
	}, nil
}

// cleanupEBPF removes what a lab that did not stop cleanly left: the BPF
// file system (and with it the programs' pins) and the cgroup.
func cleanupEBPF(name string) {
	unix.Unmount(bpfDir(name), unix.MNT_DETACH)
	if cg, err := cgroupDir(name); err == nil {
		os.Remove(cg)
	}
}
