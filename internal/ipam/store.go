package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// Attachment names one CNI attachment: a container's interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// Allocation is one address held by an attachment.
type Allocation struct {
	Attachment
	// HostIf is the node-side interface the plugin made for the attachment,
	// kept so that garbage collection can remove it without the netns.
	HostIf string `json:"hostIf,omitempty"`
	// Pod is the pod's namespace/name, when the runtime said (CNI_ARGS).
	Pod   string    `json:"pod,omitempty"`
	Since time.Time `json:"since"`
}

// Meta is what an allocation records besides its attachment.
type Meta struct {
	HostIf string
	Pod    string
}

// state is the on-disk document. It is small (one entry per pod), so it is
// rewritten whole on every change: write to a temporary file, fsync, rename
// over the old one, fsync the directory. A crash leaves either the old or
// the new document, never a torn one.
type state struct {
	Version     int                   `json:"version"`
	Allocations map[string]Allocation `json:"allocations"` // by address
	Last        map[string]string     `json:"last"`        // by range: last address handed out
}

// Store keeps the allocations of one network under dir. Every operation
// takes an exclusive flock on dir/lock, so concurrent plugin processes on a
// node serialise their read-modify-write cycles.
type Store struct {
	dir string
}

// Open returns the store in dir, creating the directory when needed.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path() string { return filepath.Join(s.dir, "allocations.json") }

// locked runs fn with the store's lock held and the current state loaded.
// If fn returns save=true, the state is written back before the lock is
// released.
func (s *Store) locked(fn func(st *state) (save bool, err error)) error {
	lf, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("ipam lock: %w", err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("ipam lock: %w", err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)

	st, err := s.load()
	if err != nil {
		return err
	}
	save, err := fn(st)
	if err != nil {
		return err
	}
	if save {
		return s.save(st)
	}
	return nil
}

func (s *Store) load() (*state, error) {
	st := &state{Version: 1, Allocations: map[string]Allocation{}, Last: map[string]string{}}
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam store: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("ipam store %s is corrupt: %w", s.path(), err)
	}
	if st.Allocations == nil {
		st.Allocations = map[string]Allocation{}
	}
	if st.Last == nil {
		st.Last = map[string]string{}
	}
	return st, nil
}

func (s *Store) save(st *state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".allocations-*")
	if err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("ipam store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("ipam store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path()); err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	if d, err := os.Open(s.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Allocate gives att one address from each range. If att already holds
// addresses (a retried ADD), those are returned with fresh=false and nothing
// changes. Otherwise the new addresses are recorded before Allocate returns,
// so a crash after this point leaks nothing that GC cannot find.
func (s *Store) Allocate(att Attachment, meta Meta, ranges []netip.Prefix) (addrs []netip.Addr, fresh bool, err error) {
	err = s.locked(func(st *state) (bool, error) {
		if held := heldBy(st, att); len(held) > 0 {
			addrs = held
			return false, nil
		}
		now := time.Now().UTC()
		for _, r := range ranges {
			last, _ := netip.ParseAddr(st.Last[r.String()])
			a, err := Next(r, last, func(a netip.Addr) bool {
				_, used := st.Allocations[a.String()]
				return used
			})
			if err != nil {
				return false, err
			}
			st.Allocations[a.String()] = Allocation{Attachment: att, HostIf: meta.HostIf, Pod: meta.Pod, Since: now}
			st.Last[r.String()] = a.String()
			addrs = append(addrs, a)
		}
		fresh = true
		return true, nil
	})
	return addrs, fresh, err
}

func heldBy(st *state, att Attachment) []netip.Addr {
	var out []netip.Addr
	for k, a := range st.Allocations {
		if a.Attachment == att {
			if addr, err := netip.ParseAddr(k); err == nil {
				out = append(out, addr)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// Get returns the addresses att holds, in address order (IPv4 first).
func (s *Store) Get(att Attachment) ([]netip.Addr, error) {
	var out []netip.Addr
	err := s.locked(func(st *state) (bool, error) {
		out = heldBy(st, att)
		return false, nil
	})
	return out, err
}

// Release frees every address att holds. Releasing nothing is not an error.
func (s *Store) Release(att Attachment) ([]netip.Addr, error) {
	var freed []netip.Addr
	err := s.locked(func(st *state) (bool, error) {
		freed = heldBy(st, att)
		for _, a := range freed {
			delete(st.Allocations, a.String())
		}
		return len(freed) > 0, nil
	})
	return freed, err
}

// ReleaseExcept frees every allocation whose attachment is not in keep, and
// returns what it freed.
func (s *Store) ReleaseExcept(keep map[Attachment]bool) ([]Allocation, error) {
	var freed []Allocation
	err := s.locked(func(st *state) (bool, error) {
		for k, a := range st.Allocations {
			if !keep[a.Attachment] {
				freed = append(freed, a)
				delete(st.Allocations, k)
			}
		}
		return len(freed) > 0, nil
	})
	return freed, err
}

// List returns every allocation by address.
func (s *Store) List() (map[netip.Addr]Allocation, error) {
	out := map[netip.Addr]Allocation{}
	err := s.locked(func(st *state) (bool, error) {
		for k, a := range st.Allocations {
			if addr, err := netip.ParseAddr(k); err == nil {
				out[addr] = a
			}
		}
		return false, nil
	})
	return out, err
}
