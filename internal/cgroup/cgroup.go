// Package cgroup finds the cgroup v2 hierarchy and moves this process
// between its groups: the eBPF dataplane attaches programs to a group,
// and the lab, its tests and benchmarks join one so that only their own
// sockets are seen.
package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Root is where the cgroup v2 hierarchy is mounted.
func Root() (string, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup2 file system is mounted")
}

// Own is the cgroup v2 directory this process is in.
func Own() (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, p), nil
		}
	}
	return "", errors.New("this process is in no cgroup v2 group")
}

// Join moves this process (all its threads) into the group at dir and
// returns how to move it back where it was.
func Join(dir string) (leave func(), err error) {
	prev, err := Own()
	if err != nil {
		return nil, err
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		return nil, err
	}
	return func() { os.WriteFile(filepath.Join(prev, "cgroup.procs"), pid, 0o644) }, nil
}
