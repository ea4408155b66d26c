package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func buildPause(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the pause binary")
	}
	out := filepath.Join(t.TempDir(), "pause")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := BuildPause(ctx, "", out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPause(t *testing.T) {
	p := buildPause(t)
	libs, err := SharedLibraries(p)
	if err != nil || len(libs) != 0 {
		t.Errorf("pause is not static: %q %v", libs, err)
	}
	cmd := exec.Command(p)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		// PID 1 of a new PID namespace, as in a pod sandbox.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	time.Sleep(200 * time.Millisecond)

	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("nsenter"); err == nil {
			// Orphan a short-lived process inside the namespace: it is
			// reparented to pause, which must reap it.
			pid := strconv.Itoa(cmd.Process.Pid)
			if out, err := exec.Command("nsenter", "-t", pid, "-p", "--", "sh", "-c", "sleep 0.5 >/dev/null 2>&1 & exit 0").CombinedOutput(); err != nil {
				t.Fatalf("nsenter: %v\n%s", err, out)
			}
			// The orphan shows up as a child of pause, then goes away
			// without staying a zombie.
			sawChild := false
			deadline := time.Now().Add(5 * time.Second)
			for {
				all, zombies := childrenOf(t, cmd.Process.Pid)
				if len(all) > len(zombies) {
					sawChild = true
				}
				if sawChild && len(all) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("children of pause: %v, zombies %v (saw a live child: %v)", all, zombies, sawChild)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("pause exited with %v after SIGTERM; stderr %s", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pause ignored SIGTERM")
	}
}

// childrenOf lists the children of pid, and those of them that are zombies.
func childrenOf(t *testing.T, pid int) (all, zombies []string) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndex(s, ")")
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[1] == strconv.Itoa(pid) {
			all = append(all, e.Name())
			if f[0] == "Z" {
				zombies = append(zombies, e.Name())
			}
		}
	}
	return all, zombies
}

// TestContainerdImport imports an archive into a private containerd with ctr.
func TestContainerdImport(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	for _, b := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (apt-get install containerd runc)", b)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cd := exec.Command("containerd", "--config", cfgPath)
	cd.Stdout, cd.Stderr = logf, logf
	cd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cd.Process.Kill()
		<-exited
	})
	ctr := func(args ...string) (string, error) {
		c := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd exited:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd did not come up:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A small image with a dynamically linked binary, and a generated file.
	p, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true on host")
	}
	root := NewRootFS()
	if err := root.AddBinary("/true", p, 0); err != nil {
		t.Fatal(err)
	}
	if err := root.AddBytes("/etc/hello", []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const ref = "podnet.test/images/true:v1"
	archive := filepath.Join(dir, ArchiveName(ref))
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	info, err := PackInfo(f, ref, root, ImageConfig{Entrypoint: []string{"/true"}})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ctr("images", "import", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := ctr("images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, ref+" ") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("%s not listed:\n%s", ref, out)
	}
	if !strings.Contains(line, info.ManifestDigest) || !strings.Contains(line, "linux/amd64") {
		t.Errorf("listing %q: want digest %s and platform linux/amd64", line, info.ManifestDigest)
	}
	// ctr import unpacks into the default snapshotter; check the content.
	if out, err := ctr("images", "check"); err != nil || !strings.Contains(out, "complete") {
		t.Errorf("ctr images check: %v\n%s", err, out)
	}
	t.Logf("imported %s (%d bytes compressed layer)", ref, info.LayerSize)
}
