package flow

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Exporter appends records to a file as JSON lines, for a log pipeline to
// tail. When the file would pass MaxBytes it is rotated: path.1 becomes
// path.2 and so on, the oldest beyond Keep is removed, and path starts
// again, the way logrotate's numbered scheme works, so shippers that follow
// renames keep up.
type Exporter struct {
	Path     string
	MaxBytes int64
	Keep     int

	mu   sync.Mutex
	f    *os.File
	size int64
}

// Write appends one record.
func (e *Exporter) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		if err := e.open(); err != nil {
			return err
		}
	}
	if e.MaxBytes > 0 && e.size > 0 && e.size+int64(len(b)) > e.MaxBytes {
		if err := e.rotate(); err != nil {
			return err
		}
	}
	n, err := e.f.Write(b)
	e.size += int64(n)
	return err
}

func (e *Exporter) open() error {
	if err := os.MkdirAll(filepath.Dir(e.Path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(e.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	e.f, e.size = f, st.Size()
	return nil
}

func (e *Exporter) rotate() error {
	e.f.Close()
	e.f = nil
	keep := max(e.Keep, 1)
	os.Remove(fmt.Sprintf("%s.%d", e.Path, keep))
	for i := keep - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", e.Path, i), fmt.Sprintf("%s.%d", e.Path, i+1))
	}
	if err := os.Rename(e.Path, e.Path+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	return e.open()
}

// Close closes the file.
func (e *Exporter) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return nil
	}
	err := e.f.Close()
	e.f = nil
	return err
}
