// Package images packs container images for the test cluster as OCI image
// layout archives, without a registry or a container engine.
//
// A RootFS collects the files of an image (host files copied to a chosen
// path, generated files, directories, symlinks, and host binaries together
// with every shared library they load). Pack writes it as a one-layer OCI
// image archive that `ctr -n k8s.io images import` accepts. Catalogue lists
// the images the upstream Kubernetes network e2e tests need, under their
// upstream names.
package images

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

type entryKind int

const (
	kindDir entryKind = iota
	kindFile
	kindSymlink
)

type entry struct {
	kind entryKind
	mode fs.FileMode // permission and setuid/setgid/sticky bits
	// For files: exactly one of host and data is used.
	host   string
	fsys   fs.FS // with host as the path inside it
	data   []byte
	isData bool
	link   string // symlink target
}

// RootFS is the content of an image's single layer. Paths are in-image
// absolute paths ("/usr/bin/dig"); parent directories that are not added
// explicitly are created with mode 0755. When a path is added, its parent
// directories are resolved through the symlinks already in the RootFS, the way
// the kernel would resolve them in the container, so adding
// "/lib/x86_64-linux-gnu/libc.so.6" after the symlink "/lib -> usr/lib"
// stores the file at "/usr/lib/x86_64-linux-gnu/libc.so.6".
//
// Host files are read when the image is packed (or fingerprinted), not when
// they are added. A RootFS is not safe for concurrent mutation.
type RootFS struct {
	entries map[string]*entry // key: clean path without leading slash
	// HostLookupPath is the list of host directories that AddTool searches.
	// It defaults to Debian's system directories, so that tools installed
	// under /usr/local or by `go install` are never picked up by accident.
	HostLookupPath []string
}

// DefaultHostLookupPath is where AddTool looks for host binaries.
var DefaultHostLookupPath = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// NewRootFS returns an empty RootFS.
func NewRootFS() *RootFS {
	return &RootFS{entries: map[string]*entry{}, HostLookupPath: DefaultHostLookupPath}
}

func cleanImagePath(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty image path")
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("image path %q is the root directory", p)
	}
	return c, nil
}

// resolveParent resolves the directory part of the clean path p through the
// symlinks in r and returns the clean resulting path. The last element is not
// followed.
func (r *RootFS) resolveParent(p string) (string, error) {
	dir, base := path.Split(p)
	d, err := r.resolve(strings.TrimSuffix(dir, "/"), 0)
	if err != nil {
		return "", fmt.Errorf("resolving %q: %w", "/"+p, err)
	}
	return strings.TrimPrefix(path.Join(d, base), "/"), nil
}

// resolve follows every element of the clean directory path p (without
// leading slash) through symlinks in r.
func (r *RootFS) resolve(p string, depth int) (string, error) {
	if depth > 40 {
		return "", errors.New("too many levels of symbolic links")
	}
	if p == "" {
		return "", nil
	}
	cur := ""
	parts := strings.Split(p, "/")
	for i, comp := range parts {
		next := path.Join(cur, comp)
		e, ok := r.entries[next]
		if ok && e.kind == kindSymlink {
			var target string
			if path.IsAbs(e.link) {
				target = path.Clean(e.link)
			} else {
				target = path.Join("/"+cur, e.link)
			}
			rest := path.Join(append([]string{target}, parts[i+1:]...)...)
			return r.resolve(strings.TrimPrefix(path.Clean(rest), "/"), depth+1)
		}
		if ok && e.kind == kindFile {
			return "", fmt.Errorf("%q is not a directory", "/"+next)
		}
		cur = next
	}
	return cur, nil
}

func (r *RootFS) put(imagePath string, e *entry) error {
	c, err := cleanImagePath(imagePath)
	if err != nil {
		return err
	}
	c, err = r.resolveParent(c)
	if err != nil {
		return err
	}
	if e.kind != kindDir {
		for p := range r.entries {
			if strings.HasPrefix(p, c+"/") {
				return fmt.Errorf("%q: cannot add a %s: %q lies beneath it", "/"+c, e.kind, "/"+p)
			}
		}
	}
	if old, ok := r.entries[c]; ok {
		switch {
		case old.kind == kindDir && e.kind == kindDir:
			old.mode = e.mode
			return nil
		case old.kind == kindSymlink && e.kind == kindSymlink && old.link == e.link:
			return nil
		case old.kind == kindFile && e.kind == kindFile:
			// Files may be replaced (e.g. a generated /etc/passwd).
		default:
			return fmt.Errorf("%q: cannot replace %s with %s", "/"+c, old.kind, e.kind)
		}
	}
	r.entries[c] = e
	return nil
}

func (k entryKind) String() string {
	switch k {
	case kindDir:
		return "directory"
	case kindFile:
		return "regular file"
	case kindSymlink:
		return "symlink"
	}
	return "?"
}

// AddDir adds a directory.
func (r *RootFS) AddDir(imagePath string, mode fs.FileMode) error {
	return r.put(imagePath, &entry{kind: kindDir, mode: mode & modeBits})
}

// AddSymlink adds a symlink at imagePath pointing to target (used verbatim;
// absolute targets are relative to the container's root).
func (r *RootFS) AddSymlink(imagePath, target string) error {
	if target == "" {
		return fmt.Errorf("symlink %q: empty target", imagePath)
	}
	return r.put(imagePath, &entry{kind: kindSymlink, mode: 0o777, link: target})
}

// AddBytes adds a regular file with the given content.
func (r *RootFS) AddBytes(imagePath string, data []byte, mode fs.FileMode) error {
	return r.put(imagePath, &entry{kind: kindFile, mode: mode & modeBits, data: bytes.Clone(data), isData: true})
}

// AddFile adds the host file hostPath (symlinks followed) as a regular file
// at imagePath. A zero mode takes the host file's mode.
func (r *RootFS) AddFile(imagePath, hostPath string, mode fs.FileMode) error {
	fi, err := os.Stat(hostPath)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", hostPath)
	}
	if mode == 0 {
		mode = fi.Mode()
	}
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return err
	}
	return r.put(imagePath, &entry{kind: kindFile, mode: mode & modeBits, host: abs})
}

// AddFS copies the tree of fsys into the image under dir ("/" for the root).
// File contents are read when the image is packed. Symlinks are copied as
// symlinks if fsys implements fs.ReadLinkFS (os.DirFS does), and are an error
// otherwise.
func (r *RootFS) AddFS(dir string, fsys fs.FS) error {
	return fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := path.Join("/", dir, p)
		if p == "." && dst == "/" {
			return nil
		}
		switch t := d.Type(); {
		case t&fs.ModeSymlink != 0:
			rl, ok := fsys.(fs.ReadLinkFS)
			if !ok {
				return fmt.Errorf("%s: symlink in an fs.FS without ReadLink", p)
			}
			target, err := rl.ReadLink(p)
			if err != nil {
				return err
			}
			return r.AddSymlink(dst, target)
		case d.IsDir():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return r.AddDir(dst, fi.Mode())
		case t.IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return r.put(dst, &entry{kind: kindFile, mode: fi.Mode() & modeBits, host: p, fsys: fsys})
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, t)
		}
	})
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// AddHostPath copies the host path p into the image at the same path,
// mirroring the host's symlinks on the way: every symlink met while resolving
// p on the host (such as /lib64 -> usr/lib64, or
// /usr/bin/nc -> /etc/alternatives/nc -> /bin/nc.openbsd) is added as a
// symlink and then followed. Directories on the way get their host modes. If
// p (after resolution) is a directory, only the directory itself is added; use
// AddHostTree for its content. It returns the resolved host path.
func (r *RootFS) AddHostPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return r.addHostPath(abs, 0)
}

func (r *RootFS) addHostPath(p string, depth int) (string, error) {
	if depth > 40 {
		return "", fmt.Errorf("%s: too many levels of symbolic links", p)
	}
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	cur := "/"
	for i, comp := range parts {
		next := filepath.Join(cur, comp)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		last := i == len(parts)-1
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if err := r.AddSymlink(next, target); err != nil {
				return "", err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			rest := filepath.Join(append([]string{target}, parts[i+1:]...)...)
			return r.addHostPath(rest, depth+1)
		case fi.IsDir():
			if err := r.AddDir(next, fi.Mode()); err != nil {
				return "", err
			}
		case fi.Mode().IsRegular() && last:
			if err := r.AddFile(next, next, fi.Mode()); err != nil {
				return "", err
			}
		default:
			return "", fmt.Errorf("%s: unsupported file type %s", next, fi.Mode().Type())
		}
		cur = next
	}
	return cur, nil
}

// AddHostTree copies the host directory dir and everything below it into the
// image at the same path (see AddHostPath). Symlinks inside the tree are copied
// as symlinks and not followed.
func (r *RootFS) AddHostTree(dir string) error {
	real, err := r.AddHostPath(dir)
	if err != nil {
		return err
	}
	return filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == real {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return r.AddDir(p, fi.Mode())
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return r.AddSymlink(p, t)
		case fi.Mode().IsRegular():
			return r.AddFile(p, p, fi.Mode())
		}
		return nil // sockets, devices, fifos: skipped
	})
}

// AddBinary copies the host executable hostPath to imagePath (mode 0755 when
// mode is zero) together with its dynamic loader and every shared library ldd
// reports for it, each at its host path (see AddHostPath). Static binaries and
// non-ELF files (scripts) are copied alone.
func (r *RootFS) AddBinary(imagePath, hostPath string, mode fs.FileMode) error {
	if mode == 0 {
		mode = 0o755
	}
	if err := r.AddFile(imagePath, hostPath, mode); err != nil {
		return err
	}
	return r.AddLibrariesOf(hostPath)
}

// AddHostBinary is AddHostPath plus the shared libraries of the file it
// resolves to.
func (r *RootFS) AddHostBinary(hostPath string) error {
	real, err := r.AddHostPath(hostPath)
	if err != nil {
		return err
	}
	return r.AddLibrariesOf(real)
}

// AddTool looks the executable name up in r.HostLookupPath and adds it with
// AddHostBinary, so /usr/bin/nc becomes the same chain of symlinks to
// nc.openbsd in the image as on the host.
func (r *RootFS) AddTool(name string) error {
	p, err := r.LookTool(name)
	if err != nil {
		return err
	}
	return r.AddHostBinary(p)
}

// LookTool returns the host path of the executable name, searched in
// r.HostLookupPath.
func (r *RootFS) LookTool(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range r.HostLookupPath {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, strings.Join(r.HostLookupPath, ":"))
}

// AddLibrariesOf adds the dynamic loader and the shared libraries of the host
// ELF file hostPath. It does nothing for static or non-ELF files.
func (r *RootFS) AddLibrariesOf(hostPath string) error {
	libs, err := SharedLibraries(hostPath)
	if err != nil {
		return err
	}
	for _, l := range libs {
		if _, err := r.AddHostPath(l); err != nil {
			return fmt.Errorf("library of %s: %w", hostPath, err)
		}
	}
	return nil
}

var libCache sync.Map // host path -> []string

// UseLdd makes SharedLibraries run ldd(1) instead of resolving dependencies
// itself. ldd is the reference, but every call costs a few hundred
// milliseconds here, and the catalogue inspects more than 200 ELF files.
var UseLdd = false

// SharedLibraries returns the host paths of the dynamic loader and of every
// shared library that the ELF file p loads, transitive dependencies included:
// the set ldd reports. It returns nil for static executables and for files
// that are not ELF. Libraries opened with dlopen are not found.
//
// Unless UseLdd is set, dependencies are resolved the way glibc's loader does
// for unprivileged programs without LD_LIBRARY_PATH: DT_RPATH/DT_RUNPATH
// (with $ORIGIN), then the directories of /etc/ld.so.conf, then the default
// directories. If a glibc-hwcaps directory exists, where the loader's choice
// depends on the CPU, it falls back to ldd.
func SharedLibraries(p string) ([]string, error) {
	if v, ok := libCache.Load(p); ok {
		return v.([]string), nil
	}
	info, err := readELF(p)
	if err != nil {
		return nil, err
	}
	if info == nil || (info.interp == "" && len(info.needed) == 0) {
		libCache.Store(p, []string(nil))
		return nil, nil
	}
	var libs []string
	if UseLdd || hasHwcaps() {
		libs, err = lddLibraries(p)
	} else {
		libs, err = resolveLibraries(p, info)
	}
	if err != nil {
		return nil, err
	}
	if info.interp != "" {
		libs = append(libs, info.interp)
	}
	sort.Strings(libs)
	libs = dedup(libs)
	libCache.Store(p, libs)
	return libs, nil
}

func lddLibraries(p string) ([]string, error) {
	cmd := exec.Command("ldd", p)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v: %s", p, err, strings.TrimSpace(stderr.String()))
	}
	libs, err := parseLdd(out)
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", p, err)
	}
	return libs, nil
}

func parseLdd(out []byte) ([]string, error) {
	var libs []string
	var missing []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.Contains(line, "statically linked") {
			continue
		}
		if name, rest, ok := strings.Cut(line, "=>"); ok {
			rest = strings.TrimSpace(rest)
			if strings.HasPrefix(rest, "not found") {
				missing = append(missing, strings.TrimSpace(name))
				continue
			}
			if i := strings.Index(rest, " ("); i >= 0 {
				rest = rest[:i]
			}
			if strings.HasPrefix(rest, "/") {
				libs = append(libs, rest)
			}
			continue
		}
		// "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)"
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "/") {
			libs = append(libs, f[0])
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("libraries not found: %s", strings.Join(missing, ", "))
	}
	return libs, sc.Err()
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Paths returns the in-image paths of all explicitly added entries, sorted.
func (r *RootFS) Paths() []string {
	out := make([]string, 0, len(r.entries))
	for p := range r.entries {
		out = append(out, "/"+p)
	}
	sort.Strings(out)
	return out
}

// Has reports whether the image path exists (after resolving symlinks in its
// parent directories; the last element is not followed).
func (r *RootFS) Has(imagePath string) bool {
	c, err := cleanImagePath(imagePath)
	if err != nil {
		return false
	}
	c, err = r.resolveParent(c)
	if err != nil {
		return false
	}
	_, ok := r.entries[c]
	return ok
}
