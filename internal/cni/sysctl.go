package cni

import (
	"os"
	"path/filepath"
	"strings"
)

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	return strings.TrimSpace(string(b)), err
}
