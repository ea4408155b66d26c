package images

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRefsMatchUpstream checks the refs against k8s.io/kubernetes v1.37.2 in
// the module cache, when it is there.
func TestRefsMatchUpstream(t *testing.T) {
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skip("go env GOMODCACHE:", err)
	}
	k := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@v1.37.2")
	manifest, err := os.ReadFile(filepath.Join(k, "test/utils/image/manifest.go"))
	if err != nil {
		t.Skip("k8s.io/kubernetes@v1.37.2 not in the module cache (cd test/kas && go mod download k8s.io/kubernetes)")
	}
	registries := map[string]string{
		"PromoterE2eRegistry": "registry.k8s.io/e2e-test-images",
		"BuildImageRegistry":  "registry.k8s.io/build-image",
		"GcRegistry":          "registry.k8s.io",
	}
	for reg, val := range registries {
		if !regexp.MustCompile(reg + `:\s+"` + regexp.QuoteMeta(val) + `"`).Match(manifest) {
			t.Errorf("manifest.go: registry %s is not %q", reg, val)
		}
	}
	for id, ref := range map[string]string{
		"Pause": PauseRef, "Agnhost": AgnhostRef, "BusyBox": BusyBoxRef, "GlibcDnsTesting": GlibcDNSTestingRef,
		"Nginx": NginxRef, "DistrolessIptables": DistrolessIptablesRef, "RegressionIssue74839": RegressionIssue74839Ref,
	} {
		re := regexp.MustCompile(`configs\[` + id + `\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}`)
		m := re.FindSubmatch(manifest)
		if m == nil {
			t.Errorf("manifest.go has no config for %s", id)
			continue
		}
		if got := registries[string(m[1])] + "/" + string(m[2]) + ":" + string(m[3]); got != ref {
			t.Errorf("%s: upstream %s, ours %s", id, got, ref)
		}
	}
	consts, err := os.ReadFile(filepath.Join(k, "cmd/kubeadm/app/constants/constants.go"))
	if err != nil {
		t.Fatal(err)
	}
	for name, ref := range map[string]string{"CoreDNSVersion": CoreDNSRef, "PauseVersion": PauseRef} {
		m := regexp.MustCompile(name + `\s*=\s*"([^"]+)"`).FindSubmatch(consts)
		if m == nil || !strings.HasSuffix(ref, ":"+string(m[1])) {
			t.Errorf("kubeadm %s = %q, ours %s", name, m, ref)
		}
	}
}

func standIn(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true on host")
	}
	dst := filepath.Join(t.TempDir(), "standin")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func catalogue(t *testing.T) []Image {
	t.Helper()
	s := standIn(t)
	imgs, err := Catalogue(Binaries{Agnhost: s, CoreDNS: s, Pause: s, Podnet: s, RegressionIssue74839: s})
	if err != nil {
		if strings.Contains(err.Error(), "host tools not found") || strings.Contains(err.Error(), "apt-get install") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return imgs
}

func TestCatalogue(t *testing.T) {
	imgs := catalogue(t)
	want := map[string][]string{
		PauseRef:                {"/pause"},
		AgnhostRef:              {"/agnhost", "/agnhost-2", "/coredns", "/bin/sh", "/usr/bin/curl", "/usr/bin/nc.openbsd", "/usr/bin/dig", "/usr/bin/getent", "/etc/nsswitch.conf"},
		BusyBoxRef:              {"/bin/sh", "/usr/bin/sleep", "/usr/bin/wget", "/usr/bin/nc", "/usr/bin/nslookup", "/usr/sbin/ip", "/usr/bin/ping"},
		GlibcDNSTestingRef:      {"/coredns", "/usr/bin/dig", "/usr/bin/host", "/usr/bin/getent", "/usr/bin/seq"},
		NginxRef:                {"/usr/sbin/nginx", "/etc/nginx/nginx.conf", "/etc/nginx/mime.types", "/usr/share/nginx/html/index.html"},
		CoreDNSRef:              {"/coredns"},
		DistrolessIptablesRef:   {"/usr/sbin/iptables", "/usr/sbin/conntrack", "/bin/sh"},
		RegressionIssue74839Ref: {"/regression-issue-74839"},
		PodnetRef:               {"/podnet", "/usr/sbin/nft"},
	}
	seen := map[string]bool{}
	for _, im := range imgs {
		seen[im.Ref] = true
		paths, ok := want[im.Ref]
		if !ok {
			t.Errorf("unexpected image %s", im.Ref)
			continue
		}
		for _, p := range paths {
			if !im.Root.Has(p) {
				t.Errorf("%s: %s missing", im.Name, p)
			}
		}
		if _, _, err := im.Root.complete(); err != nil {
			t.Errorf("%s: %v", im.Name, err)
		}
		if im.UsedBy == "" {
			t.Errorf("%s: no UsedBy", im.Name)
		}
	}
	for ref := range want {
		if !seen[ref] {
			t.Errorf("image %s missing from the catalogue", ref)
		}
	}
	// Without binaries, only the images made of host tools remain.
	imgs, err := Catalogue(Binaries{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, im := range imgs {
		names = append(names, im.Name)
	}
	if got := strings.Join(names, ","); got != "busybox,glibc-dns-testing,nginx,distroless-iptables" {
		t.Errorf("catalogue without binaries: %s", got)
	}
}

// extract writes the layer of root into dir, the way a snapshotter would.
func extract(t *testing.T, root *RootFS, dir string) {
	t.Helper()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		_, err := root.writeLayer(tw)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	tr := tar.NewReader(pr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, os.FileMode(h.Mode&0o777)); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(h.Mode&0o777))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		default:
			t.Fatalf("%s: unexpected type %c", h.Name, h.Typeflag)
		}
	}
}

// TestImagesRunChrooted unpacks each image and runs its tools chrooted into
// it, which proves that every needed library and the loader are inside.
func TestImagesRunChrooted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chroot")
	}
	imgs := catalogue(t)
	toolbox := []string{
		"echo ok | cat; test -n x; seq 1 2; sleep 0; timeout 1 true; date >/tmp/o; hostname; env >/tmp/o; ls / >/tmp/o; touch /tmp/t; mkdir /tmp/d",
		"getent hosts localhost", "dig -v", "nslookup -version", "host -V", "curl --version", "wget --version >/tmp/o",
		"nc -h 2>&1 | grep -q OpenBSD", "ip -V", "ping -V", "echo a | grep a | sed s/a/b/ | awk '{print}'",
		"bash -c 'echo $BASH_VERSION'", "id -u", "iperf -v; socat -V | head -1",
	}
	cmds := map[string][]string{
		BusyBoxRef:            toolbox,
		AgnhostRef:            toolbox,
		GlibcDNSTestingRef:    toolbox,
		NginxRef:              {"nginx -t"},
		DistrolessIptablesRef: {"iptables -V", "iptables-legacy -V", "ip6tables -V", "conntrack --version", "sleep 0"},
		PodnetRef:             {"/usr/sbin/nft --version"},
		PauseRef:              {"/pause"}, // the stand-in is true(1)
	}
	for _, im := range imgs {
		cs, ok := cmds[im.Ref]
		if !ok {
			continue
		}
		t.Run(im.Name, func(t *testing.T) {
			dir := t.TempDir()
			extract(t, im.Root, dir)
			// No devices in a chroot: regular files stand in for the ones
			// the tools open (nginx opens /dev/stdout for its access log).
			if err := os.MkdirAll(filepath.Join(dir, "dev"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{"null", "stdout", "stderr"} {
				if err := os.WriteFile(filepath.Join(dir, "dev", d), nil, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range cs {
				argv := []string{"/bin/sh", "-c", c}
				if !im.Root.Has("/bin/sh") {
					argv = strings.Fields(c)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
				cmd.Path = argv[0]
				cmd.Dir = "/"
				cmd.Env = []string{DefaultPath}
				cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: dir}
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Errorf("%s: %v\n%s", c, err, out)
				}
			}
		})
	}
}
