package images

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

type elfInfo struct {
	class   elf.Class
	machine elf.Machine
	interp  string
	needed  []string
	rpath   []string // DT_RPATH entries, $ORIGIN expanded
	runpath []string // DT_RUNPATH entries, $ORIGIN expanded
}

// readELF returns nil, nil for files that are not ELF.
func readELF(p string) (*elfInfo, error) {
	f, err := elf.Open(p)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	info := &elfInfo{class: f.Class, machine: f.Machine}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: reading PT_INTERP: %w", p, err)
			}
			info.interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if f.Section(".dynamic") == nil {
		return info, nil
	}
	if info.needed, err = f.DynString(elf.DT_NEEDED); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	origin := filepath.Dir(p)
	expand := func(tag elf.DynTag) ([]string, error) {
		vals, err := f.DynString(tag)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				if d == "" {
					continue
				}
				d = strings.ReplaceAll(d, "${ORIGIN}", origin)
				d = strings.ReplaceAll(d, "$ORIGIN", origin)
				out = append(out, d)
			}
		}
		return out, nil
	}
	if info.rpath, err = expand(elf.DT_RPATH); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if info.runpath, err = expand(elf.DT_RUNPATH); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return info, nil
}

var (
	sysDirsOnce sync.Once
	sysDirs     []string
	hwcaps      bool
)

// systemLibDirs returns the directories of /etc/ld.so.conf (which ldconfig
// puts in ld.so.cache, in that order) followed by the loader's defaults.
func systemLibDirs() []string {
	sysDirsOnce.Do(func() {
		seen := map[string]bool{}
		add := func(d string) {
			d = filepath.Clean(d)
			if !seen[d] {
				seen[d] = true
				sysDirs = append(sysDirs, d)
			}
		}
		var readConf func(string, int)
		readConf = func(file string, depth int) {
			if depth > 10 {
				return
			}
			f, err := os.Open(file)
			if err != nil {
				return
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line, _, _ := strings.Cut(sc.Text(), "#")
				line = strings.TrimSpace(line)
				switch {
				case line == "":
				case strings.HasPrefix(line, "include "):
					pat := strings.TrimSpace(strings.TrimPrefix(line, "include "))
					if !filepath.IsAbs(pat) {
						pat = filepath.Join(filepath.Dir(file), pat)
					}
					matches, _ := filepath.Glob(pat)
					for _, m := range matches { // Glob sorts
						readConf(m, depth+1)
					}
				case strings.HasPrefix(line, "hwcap "):
				default:
					add(line)
				}
			}
		}
		readConf("/etc/ld.so.conf", 0)
		for _, d := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"} {
			add(d)
		}
		for _, d := range sysDirs {
			if fi, err := os.Stat(filepath.Join(d, "glibc-hwcaps")); err == nil && fi.IsDir() {
				hwcaps = true
			}
		}
	})
	return sysDirs
}

func hasHwcaps() bool {
	systemLibDirs()
	return hwcaps
}

// resolveLibraries walks DT_NEEDED breadth first from the executable, as the
// loader does, and returns the path of every library found.
func resolveLibraries(p string, exe *elfInfo) ([]string, error) {
	type item struct {
		name  string
		from  *elfInfo
		chain []*elfInfo // loaders of from, for DT_RPATH inheritance
	}
	loaded := map[string]string{} // soname -> path
	var out []string
	var missing []string
	queue := []item{}
	for _, n := range exe.needed {
		queue = append(queue, item{n, exe, nil})
	}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if _, ok := loaded[it.name]; ok {
			continue
		}
		path, info, err := findLibrary(it.name, it.from, it.chain, exe)
		if err != nil {
			return nil, err
		}
		if path == "" {
			missing = append(missing, it.name)
			loaded[it.name] = ""
			continue
		}
		loaded[it.name] = path
		out = append(out, path)
		chain := append(append([]*elfInfo(nil), it.chain...), it.from)
		for _, n := range info.needed {
			queue = append(queue, item{n, info, chain})
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: libraries not found: %s", p, strings.Join(missing, ", "))
	}
	return out, nil
}

func findLibrary(name string, from *elfInfo, chain []*elfInfo, exe *elfInfo) (string, *elfInfo, error) {
	try := func(cand string) (*elfInfo, error) {
		fi, err := os.Stat(cand)
		if err != nil || !fi.Mode().IsRegular() {
			return nil, nil
		}
		info, err := readELF(cand)
		if err != nil || info == nil {
			return nil, nil // unreadable or not ELF: the loader skips it too
		}
		if info.class != exe.class || info.machine != exe.machine {
			return nil, nil
		}
		return info, nil
	}
	if strings.Contains(name, "/") {
		info, err := try(name)
		if info == nil || err != nil {
			return "", nil, err
		}
		return name, info, nil
	}
	var dirs []string
	if len(from.runpath) == 0 {
		// DT_RPATH of the object, then of its loaders up to the executable.
		dirs = append(dirs, from.rpath...)
		for i := len(chain) - 1; i >= 0; i-- {
			if len(chain[i].runpath) == 0 {
				dirs = append(dirs, chain[i].rpath...)
			}
		}
	}
	dirs = append(dirs, from.runpath...)
	dirs = append(dirs, systemLibDirs()...)
	for _, d := range dirs {
		cand := filepath.Join(d, name)
		info, err := try(cand)
		if err != nil {
			return "", nil, err
		}
		if info != nil {
			return cand, info, nil
		}
	}
	return "", nil, nil
}
