package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/netns"
)

// state is what a lab leaves on disk so that `lab down` can remove it even
// after the lab process crashed.
type state struct {
	Name   string `json:"name"`
	PID    int    `json:"pid"`
	Prefix string `json:"prefix"`
}

func writeState(dir string, st state) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.Marshal(st)
	return os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644)
}

func readState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// Exists reports whether a lab of that name has state on disk.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(Dir(name), "state.json"))
	return err == nil
}

// Cleanup removes everything the lab called name made, working only from
// what is on disk: it stops the lab process if it is still alive (and is
// not the caller), deletes every namespace with the lab's prefix (which
// takes their links, routes and rules with them), and removes the state
// directory.
func Cleanup(name string) error {
	dir := Dir(name)
	st, err := readState(dir)
	if err == nil && st.PID > 0 && st.PID != os.Getpid() && isLabProcess(st.PID) {
		stopProcess(st.PID)
	}
	var errs []error
	nss, err := netns.List(Prefix(name))
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range nss {
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	cleanupEBPF(name)
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stopProcess sends SIGTERM, then SIGKILL if the process is still there
// after a grace period.
func stopProcess(pid int) {
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 40 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

// SocketPath is the lab process's API socket.
func SocketPath(name string) string { return filepath.Join(Dir(name), "lab.sock") }

// LogPath is where the lab process logs.
func LogPath(name string) string { return filepath.Join(Dir(name), "lab.log") }

// isLabProcess guards against a reused PID: only a process whose command
// line is a lab server is ever signalled.
func isLabProcess(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "lab\x00serve")
}
