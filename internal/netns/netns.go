// Package netns creates, enters and removes named network namespaces.
//
// Namespaces are named the way iproute2 names them: a bind mount of the
// namespace file at /run/netns/NAME, so `ip netns exec` and `nsenter` work
// on everything podnet makes. Entering a namespace is done in exactly one
// place (Do), which locks the goroutine to its OS thread for the duration;
// everything else binds netlink handles to a namespace file descriptor and
// never switches threads at all.
package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are mounted.
const Dir = "/run/netns"

// Path returns the mount path of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes a new network namespace mounted at Path(name). It fails if
// the name is taken. The calling thread's namespace is left unchanged.
func Create(name string) (string, error) {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return "", err
	}
	p := Path(name)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", fmt.Errorf("netns %s: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	// The new namespace is made on a dedicated thread that is thrown away
	// afterwards (the goroutine exits while still locked), so no other
	// goroutine can ever run in it by accident.
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(p)
		return "", fmt.Errorf("netns %s: %w", name, err)
	}
	// Bring up loopback: every node and pod needs it.
	h, err := Handle(p)
	if err != nil {
		Delete(name)
		return "", err
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			Delete(name)
			return "", fmt.Errorf("netns %s: lo up: %w", name, err)
		}
	}
	return p, nil
}

// Delete unmounts and removes a named namespace. A namespace that is
// already gone is not an error.
func Delete(name string) error {
	return DeletePath(Path(name))
}

// DeletePath is Delete for a mount path.
func DeletePath(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns %s: unmount: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netns %s: %w", p, err)
	}
	return nil
}

// List returns the names of the mounted namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Handle returns a netlink handle bound to the namespace at path.
func Handle(path string) (*netlink.Handle, error) {
	h, err := vns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return nh, nil
}

// Do runs fn on a thread that is inside the namespace at path. Processes
// that fn starts inherit that namespace.
func Do(path string, fn func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}

// Sysctl writes value to /proc/sys/KEY inside the namespace at path (or in
// the current one when path is empty). key uses slashes: net/ipv4/ip_forward.
func Sysctl(path, key, value string) error {
	write := func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	}
	if path == "" {
		return write()
	}
	return Do(path, write)
}
