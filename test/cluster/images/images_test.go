package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
)

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                                 "docker.io/library/busybox:latest",
		"podnet/podnet:dev":                       "docker.io/podnet/podnet:dev",
		"registry.k8s.io/pause:3.10.2":            "registry.k8s.io/pause:3.10.2",
		"localhost/x/y":                           "localhost/x/y:latest",
		"localhost:5000/x:1":                      "localhost:5000/x:1",
		"registry.k8s.io/coredns/coredns:v1.14.6": "registry.k8s.io/coredns/coredns:v1.14.6",
		"x@sha256:abc":                            "docker.io/library/x@sha256:abc",
	} {
		got, err := NormalizeRef(in)
		if err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Upper/Case", "a//b", "a/"} {
		if got, err := NormalizeRef(bad); err == nil {
			t.Errorf("NormalizeRef(%q) = %q, want error", bad, got)
		}
	}
	if got, want := ArchiveName("registry.k8s.io/e2e-test-images/agnhost:2.66.1"), "registry.k8s.io_e2e-test-images_agnhost_2.66.1.tar"; got != want {
		t.Errorf("ArchiveName = %q, want %q", got, want)
	}
}

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
	libs, err := parseLdd([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}; strings.Join(libs, ",") != strings.Join(want, ",") {
		t.Errorf("got %q, want %q", libs, want)
	}
	if _, err := parseLdd([]byte("\tlibfoo.so.1 => not found\n")); err == nil {
		t.Error("missing library: want error")
	}
}

// smallRoot builds a RootFS with every kind of entry. The order of the calls
// is permuted by reverse to check that output does not depend on it.
func smallRoot(t *testing.T, hostFile string, reverse bool) *RootFS {
	t.Helper()
	steps := []func(r *RootFS) error{
		func(r *RootFS) error { return r.AddSymlink("/bin", "usr/bin") },
		func(r *RootFS) error { return r.AddDir("/tmp", 0o777|os.ModeSticky) },
		func(r *RootFS) error { return r.AddBytes("/etc/hello.txt", []byte("hello\n"), 0o600) },
		func(r *RootFS) error { return r.AddFile("/opt/data/file", hostFile, 0o640) },
		func(r *RootFS) error { return r.AddSymlink("/opt/link", "data/file") },
	}
	r := NewRootFS()
	for i := range steps {
		s := steps[i]
		if reverse {
			s = steps[len(steps)-1-i]
		}
		if err := s(r); err != nil {
			t.Fatal(err)
		}
	}
	// Through the /bin symlink: stored under usr/bin.
	if err := r.AddBytes("/bin/hi", []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

type tarFile struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, r io.Reader) []tarFile {
	t.Helper()
	var out []tarFile
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarFile{h, b})
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestPackLayout(t *testing.T) {
	hostFile := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(hostFile, []byte("host data"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := smallRoot(t, hostFile, false)
	cfg := ImageConfig{Entrypoint: []string{"/bin/hi"}, Cmd: []string{"x"}, Env: []string{"A=b"}, ExposedPorts: []string{"80"}}
	var buf bytes.Buffer
	info, err := PackInfo(&buf, "example.com/test/img:1", root, cfg)
	if err != nil {
		t.Fatal(err)
	}
	files := readTar(t, bytes.NewReader(buf.Bytes()))
	byName := map[string][]byte{}
	var names []string
	for _, f := range files {
		names = append(names, f.hdr.Name)
		byName[f.hdr.Name] = f.data
		if !f.hdr.ModTime.Equal(zeroTime) || f.hdr.Uid != 0 || f.hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", f.hdr.Name, f.hdr.ModTime, f.hdr.Uid, f.hdr.Gid)
		}
		if strings.HasPrefix(f.hdr.Name, "blobs/sha256/") && f.hdr.Typeflag == tar.TypeReg {
			if got := sha(f.data); got != "sha256:"+strings.TrimPrefix(f.hdr.Name, "blobs/sha256/") {
				t.Errorf("blob %s has digest %s", f.hdr.Name, got)
			}
		}
	}
	if !sort.StringsAreSorted(names) || len(names) != 7 || names[0] != "blobs/" || names[5] != "index.json" || names[6] != "oci-layout" {
		t.Errorf("outer entries: %q", names)
	}
	if string(byName["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %s", byName["oci-layout"])
	}

	var idx ociIndex
	if err := json.Unmarshal(byName["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != MediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index: %+v", idx)
	}
	md := idx.Manifests[0]
	if md.Annotations[AnnotationRefName] != "example.com/test/img:1" || md.Annotations[AnnotationContainerdImageName] != "example.com/test/img:1" {
		t.Errorf("annotations: %v", md.Annotations)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != "amd64" || md.MediaType != MediaTypeManifest {
		t.Errorf("manifest descriptor: %+v", md)
	}
	blob := func(d ociDescriptor) []byte {
		b, ok := byName["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok || int64(len(b)) != d.Size {
			t.Fatalf("blob %s: present %v, size %d, want %d", d.Digest, ok, len(b), d.Size)
		}
		return b
	}
	if md.Digest != info.ManifestDigest {
		t.Errorf("manifest digest %s, info %s", md.Digest, info.ManifestDigest)
	}
	var man ociManifest
	if err := json.Unmarshal(blob(md), &man); err != nil {
		t.Fatal(err)
	}
	if man.SchemaVersion != 2 || man.MediaType != MediaTypeManifest || man.Config.MediaType != MediaTypeConfig ||
		len(man.Layers) != 1 || man.Layers[0].MediaType != MediaTypeLayer {
		t.Fatalf("manifest: %+v", man)
	}
	var img ociImage
	if err := json.Unmarshal(blob(man.Config), &img); err != nil {
		t.Fatal(err)
	}
	if img.OS != "linux" || img.Architecture != "amd64" || img.RootFS.Type != "layers" || len(img.RootFS.DiffIDs) != 1 {
		t.Errorf("config: %+v", img)
	}
	c := img.Config
	if strings.Join(c.Entrypoint, " ") != "/bin/hi" || strings.Join(c.Cmd, " ") != "x" || c.WorkingDir != "/" ||
		strings.Join(c.Env, " ") != DefaultPath+" A=b" {
		t.Errorf("runtime config: %+v", c)
	}
	if _, ok := c.ExposedPorts["80/tcp"]; !ok {
		t.Errorf("exposed ports: %v", c.ExposedPorts)
	}

	// The layer: gzip with a fixed header, diff ID of the tar inside.
	layerGz := blob(man.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(layerGz))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" || zr.OS != 255 {
		t.Errorf("gzip header: mtime %v name %q os %d", zr.ModTime, zr.Name, zr.OS)
	}
	layerTar, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if sha(layerTar) != img.RootFS.DiffIDs[0] || info.DiffID != img.RootFS.DiffIDs[0] {
		t.Errorf("diff ID %s, tar digest %s", img.RootFS.DiffIDs[0], sha(layerTar))
	}
	type want struct {
		typ  byte
		mode int64
		link string
		data string
	}
	wantLayer := map[string]want{
		"bin":           {tar.TypeSymlink, 0o777, "usr/bin", ""},
		"etc/":          {tar.TypeDir, 0o755, "", ""},
		"etc/hello.txt": {tar.TypeReg, 0o600, "", "hello\n"},
		"opt/":          {tar.TypeDir, 0o755, "", ""},
		"opt/data/":     {tar.TypeDir, 0o755, "", ""},
		"opt/data/file": {tar.TypeReg, 0o640, "", "host data"},
		"opt/link":      {tar.TypeSymlink, 0o777, "data/file", ""},
		"tmp/":          {tar.TypeDir, 0o1777, "", ""},
		"usr/":          {tar.TypeDir, 0o755, "", ""},
		"usr/bin/":      {tar.TypeDir, 0o755, "", ""},
		"usr/bin/hi":    {tar.TypeReg, 0o755, "", "#!/bin/sh\necho hi\n"},
	}
	entries := readTar(t, bytes.NewReader(layerTar))
	var lnames []string
	for _, e := range entries {
		lnames = append(lnames, e.hdr.Name)
		w, ok := wantLayer[e.hdr.Name]
		if !ok {
			t.Errorf("unexpected layer entry %q", e.hdr.Name)
			continue
		}
		if e.hdr.Typeflag != w.typ || e.hdr.Mode != w.mode || e.hdr.Linkname != w.link || string(e.data) != w.data ||
			!e.hdr.ModTime.Equal(zeroTime) || e.hdr.Uid != 0 {
			t.Errorf("%s: type %c mode %o link %q data %q mtime %v", e.hdr.Name, e.hdr.Typeflag, e.hdr.Mode, e.hdr.Linkname, e.data, e.hdr.ModTime)
		}
	}
	if len(entries) != len(wantLayer) || !sort.StringsAreSorted(lnames) || info.Entries != len(wantLayer) {
		t.Errorf("layer entries (sorted %v): %q", sort.StringsAreSorted(lnames), lnames)
	}
}

func TestPackDeterministic(t *testing.T) {
	hostFile := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(hostFile, []byte("host data"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := ImageConfig{Entrypoint: []string{"/bin/hi"}, Labels: map[string]string{"b": "2", "a": "1"}, ExposedPorts: []string{"53/udp", "53/tcp"}}
	pack := func(reverse bool) ([]byte, string) {
		r := smallRoot(t, hostFile, reverse)
		var buf bytes.Buffer
		if err := Pack(&buf, "test/img:1", r, cfg); err != nil {
			t.Fatal(err)
		}
		fp, err := Fingerprint("test/img:1", r, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return buf.Bytes(), fp
	}
	a, fa := pack(false)
	b, fb := pack(false)
	c, fc := pack(true)
	if !bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Error("packing the same content twice gave different archives")
	}
	if fa != fb || fa != fc {
		t.Errorf("fingerprints differ: %s %s %s", fa, fb, fc)
	}
	if err := os.WriteFile(hostFile, []byte("host datA"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, fd := pack(false)
	if bytes.Equal(a, d) || fd == fa {
		t.Error("changing a host file's content changed neither archive nor fingerprint")
	}
	r := smallRoot(t, hostFile, false)
	if f2, _ := Fingerprint("test/img:2", r, cfg); f2 == fd {
		t.Error("fingerprint ignores the ref")
	}
	if f3, _ := Fingerprint("test/img:1", r, ImageConfig{}); f3 == fd {
		t.Error("fingerprint ignores the config")
	}
}

func TestSymlinkResolution(t *testing.T) {
	r := NewRootFS()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.AddSymlink("/lib", "usr/lib"))
	must(r.AddSymlink("/usr/lib64", "/lib"))
	must(r.AddBytes("/lib/x/libc.so", nil, 0o644))
	must(r.AddBytes("/usr/lib64/ld.so", nil, 0o755))
	for _, p := range []string{"/usr/lib/x/libc.so", "/usr/lib/ld.so", "/lib/x/libc.so"} {
		if !r.Has(p) {
			t.Errorf("%s missing; have %q", p, r.Paths())
		}
	}
	if err := r.AddDir("/lib", 0o755); err == nil {
		t.Error("replacing a symlink with a directory: want error")
	}
	// An entry added beneath a path that later becomes a symlink.
	r2 := NewRootFS()
	must(r2.AddBytes("/sbin/x", nil, 0o755))
	if err := r2.AddSymlink("/sbin", "usr/sbin"); err == nil {
		t.Error("replacing a directory with a symlink: want error")
	}
	r3 := NewRootFS()
	must(r3.AddBytes("/a", nil, 0o644))
	if err := r3.AddBytes("/a/b", nil, 0o644); err == nil {
		t.Error("file beneath a file: want error")
	}
}

func TestAddHostBinary(t *testing.T) {
	p, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true on host")
	}
	libs, err := SharedLibraries(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) == 0 {
		t.Skipf("%s is static", p)
	}
	r := NewRootFS()
	if err := r.AddBinary("/true", p, 0); err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		if !r.Has(l) {
			t.Errorf("library %s missing from %q", l, r.Paths())
		}
	}
	// The host's merged-/usr symlinks are mirrored.
	for _, d := range []string{"/lib", "/lib64"} {
		if fi, err := os.Lstat(d); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			if e := r.entries[strings.TrimPrefix(d, "/")]; e == nil || e.kind != kindSymlink {
				t.Errorf("%s is a symlink on the host but not in the image", d)
			}
		}
	}
	if _, err := Fingerprint("x", r, ImageConfig{}); err != nil {
		t.Fatal(err)
	}
}

// TestResolverMatchesLdd compares the native dependency resolver with ldd on
// host binaries that have many dependencies.
func TestResolverMatchesLdd(t *testing.T) {
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	if hasHwcaps() {
		t.Skip("glibc-hwcaps directories present: SharedLibraries uses ldd anyway")
	}
	files := []string{"/usr/bin/true", "/usr/bin/dig", "/usr/bin/curl", "/usr/bin/wget", "/usr/sbin/nft", "/usr/sbin/nginx",
		"/usr/sbin/ip", "/usr/bin/bash", "/usr/sbin/xtables-nft-multi", "/usr/sbin/conntrack", "/usr/bin/socat"}
	if sos, _ := filepath.Glob("/usr/lib/*-linux-gnu/xtables/libxt_conntrack.so"); len(sos) > 0 {
		files = append(files, sos[0])
	}
	realSet := func(libs []string) []string {
		var out []string
		for _, l := range libs {
			r, err := filepath.EvalSymlinks(l)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		sort.Strings(out)
		return dedup(out)
	}
	checked := 0
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		info, err := readELF(f)
		if err != nil || info == nil {
			t.Fatalf("%s: %v", f, err)
		}
		native, err := resolveLibraries(f, info)
		if err != nil {
			t.Fatal(err)
		}
		ldd, err := lddLibraries(f)
		if err != nil {
			t.Fatal(err)
		}
		if info.interp != "" {
			native = append(native, info.interp)
		}
		n, l := realSet(native), realSet(ldd)
		if strings.Join(n, "\n") != strings.Join(l, "\n") {
			t.Errorf("%s:\nnative %q\nldd    %q", f, n, l)
		}
		checked++
	}
	if checked < 3 {
		t.Skipf("only %d of the sample binaries are installed", checked)
	}
}

func TestAddFS(t *testing.T) {
	fsys := fstest.MapFS{
		"app/run.sh":  {Data: []byte("#!/bin/sh\n"), Mode: 0o755},
		"app/conf/a":  {Data: []byte("a"), Mode: 0o644},
		"app/current": {Data: []byte("conf"), Mode: fs.ModeSymlink},
		"readme":      {Data: []byte("hi"), Mode: 0o600},
	}
	r := NewRootFS()
	if err := r.AddFS("/srv", fsys); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/srv/app/run.sh", "/srv/app/conf/a", "/srv/app/current", "/srv/readme"} {
		if !r.Has(p) {
			t.Errorf("%s missing: %q", p, r.Paths())
		}
	}
	if e := r.entries["srv/app/current"]; e == nil || e.kind != kindSymlink || e.link != "conf" {
		t.Errorf("symlink: %+v", e)
	}
	var a, b bytes.Buffer
	if err := Pack(&a, "x/y:z", r, ImageConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := Pack(&b, "x/y:z", r, ImageConfig{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("not deterministic")
	}
	fp1, _ := Fingerprint("x/y:z", r, ImageConfig{})
	fsys["readme"].Data = []byte("ho")
	fp2, _ := Fingerprint("x/y:z", r, ImageConfig{})
	if fp1 == fp2 {
		t.Error("fingerprint ignores fs.FS content")
	}
}
