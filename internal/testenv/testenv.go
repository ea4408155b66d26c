// Package testenv holds helpers for podnet's root tests: skipping with a
// reason when the machine cannot run them, building the binaries under
// test, and making throwaway network namespaces that are removed even when
// a test fails.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/podnet/podnet/internal/netns"
)

// RequireRoot skips the test, saying why, unless it runs as root on Linux
// with network namespaces available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces (CI runs as root)")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("skipped: no network namespace support here")
	}
}

// Unique returns a short random suffix for names of things a test makes.
func Unique() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NetNS creates a throwaway namespace named pnt-<unique>-<suffix> and
// removes it when the test ends, pass or fail.
func NetNS(t testing.TB, suffix string) string {
	t.Helper()
	name := "pnt-" + Unique() + "-" + suffix
	p, err := netns.Create(name)
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	return p
}

// ModuleRoot is the repository root (where go.mod is).
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the podnet module")
	}
	return filepath.Dir(gomod), nil
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// refPlugins are the reference CNI plugins the tests chain with and
// compare against, built from the version pinned in go.mod.
var refPlugins = []string{
	"github.com/containernetworking/plugins/plugins/meta/portmap",
	"github.com/containernetworking/plugins/plugins/meta/bandwidth",
	"github.com/containernetworking/plugins/plugins/meta/tuning",
	"github.com/containernetworking/plugins/plugins/main/bridge",
	"github.com/containernetworking/plugins/plugins/ipam/host-local",
	"github.com/containernetworking/plugins/plugins/main/loopback",
	"github.com/containernetworking/cni/cnitool",
}

// Binaries builds podnet and the reference plugins into ROOT/bin/cni (the
// go build cache makes repeat builds quick) and returns that directory: a
// CNI_PATH holding podnet, portmap, bandwidth, tuning, bridge, host-local,
// loopback and cnitool.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir = filepath.Join(root, "bin", "cni")
		args := append([]string{"build", "-o", binDir + "/", "./cmd/podnet"}, refPlugins...)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return binDir
}
