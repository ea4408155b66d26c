package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// Media types and annotations of the OCI image layout written by Pack.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	AnnotationRefName             = "org.opencontainers.image.ref.name"
	AnnotationContainerdImageName = "io.containerd.image.name"

	// DefaultPath is the PATH put in an image's environment when ImageConfig
	// sets none.
	DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// formatVersion changes whenever Pack's output for the same input changes, so
// that Fingerprint invalidates archives written by an older Pack.
const formatVersion = "podnet-images/1"

// gzipLevel trades a little size for speed; agnhost packs in about 2 s.
const gzipLevel = gzip.DefaultCompression

// ImageConfig is the runtime part of an image configuration.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	// Env is a list of KEY=value. If it has no PATH, DefaultPath is added.
	Env []string
	// WorkingDir defaults to "/".
	WorkingDir string
	// User as in a Dockerfile USER: "uid", "uid:gid" or a name. Empty means root.
	User string
	// ExposedPorts such as "80/tcp" or "53/udp" (documentation only).
	ExposedPorts []string
	Labels       map[string]string
	StopSignal   string
}

// Info describes an archive written by Pack.
type Info struct {
	Ref              string // normalized reference, as containerd will name the image
	ManifestDigest   string
	ConfigDigest     string
	LayerDigest      string // digest of the gzip'd layer blob
	DiffID           string // digest of the uncompressed layer tar
	LayerSize        int64  // compressed
	UncompressedSize int64
	Entries          int // tar entries in the layer
}

type ociConfigBody struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

type ociRootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type ociHistory struct {
	Created   string `json:"created,omitempty"`
	CreatedBy string `json:"created_by,omitempty"`
}

type ociImage struct {
	Created      string        `json:"created,omitempty"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       ociConfigBody `json:"config"`
	RootFS       ociRootFS     `json:"rootfs"`
	History      []ociHistory  `json:"history,omitempty"`
}

type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type ociIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []ociDescriptor `json:"manifests"`
}

const epoch = "1970-01-01T00:00:00Z"

func (c ImageConfig) body() ociConfigBody {
	b := ociConfigBody{
		User:       c.User,
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		WorkingDir: c.WorkingDir,
		Labels:     c.Labels,
		StopSignal: c.StopSignal,
	}
	if b.WorkingDir == "" {
		b.WorkingDir = "/"
	}
	hasPath := false
	for _, e := range c.Env {
		if strings.HasPrefix(e, "PATH=") {
			hasPath = true
		}
	}
	b.Env = append([]string(nil), c.Env...)
	if !hasPath {
		b.Env = append([]string{DefaultPath}, b.Env...)
	}
	if len(c.ExposedPorts) > 0 {
		b.ExposedPorts = map[string]struct{}{}
		for _, p := range c.ExposedPorts {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			b.ExposedPorts[p] = struct{}{}
		}
	}
	return b
}

// NormalizeRef returns the fully qualified form of an image reference, as
// containerd's CRI plugin names images: "busybox" becomes
// "docker.io/library/busybox:latest" and "podnet/podnet:dev" becomes
// "docker.io/podnet/podnet:dev". Images imported under a short name are not
// found by the kubelet.
func NormalizeRef(ref string) (string, error) {
	if ref == "" {
		return "", fmt.Errorf("empty image reference")
	}
	name, digest, hasDigest := strings.Cut(ref, "@")
	tag := ""
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	if name == "" || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return "", fmt.Errorf("invalid image reference %q", ref)
	}
	domain, rest, ok := strings.Cut(name, "/")
	if !ok || !(strings.ContainsAny(domain, ".:") || domain == "localhost") {
		domain, rest = "docker.io", name
	}
	if domain == "docker.io" && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	if rest != strings.ToLower(rest) {
		return "", fmt.Errorf("invalid image reference %q: repository must be lowercase", ref)
	}
	out := domain + "/" + rest
	if tag == "" && !hasDigest {
		tag = "latest"
	}
	if tag != "" {
		out += ":" + tag
	}
	if hasDigest {
		out += "@" + digest
	}
	return out, nil
}

// ArchiveName is the file name mkimages uses for the archive of ref, e.g.
// "registry.k8s.io_e2e-test-images_agnhost_2.66.1.tar".
func ArchiveName(ref string) string {
	n, err := NormalizeRef(ref)
	if err != nil {
		n = ref
	}
	return strings.NewReplacer("/", "_", ":", "_", "@", "_").Replace(n) + ".tar"
}

// Pack writes root as a one-layer linux/amd64 OCI image layout tarball named
// ref to w. The output depends only on the inputs: entries are sorted, owners
// are root, modification times are the epoch and the gzip header is fixed.
func Pack(w io.Writer, ref string, root *RootFS, cfg ImageConfig) error {
	_, err := PackInfo(w, ref, root, cfg)
	return err
}

// PackInfo is Pack, also returning the digests and sizes it wrote.
func PackInfo(w io.Writer, ref string, root *RootFS, cfg ImageConfig) (*Info, error) {
	name, err := NormalizeRef(ref)
	if err != nil {
		return nil, err
	}
	info := &Info{Ref: name}

	// The layer: tar -> (sha256 for the diff ID, gzip -> buffer).
	var layer bytes.Buffer
	gz, err := gzip.NewWriterLevel(&layer, gzipLevel)
	if err != nil {
		return nil, err
	}
	diff := sha256.New()
	cnt := &countWriter{}
	tw := tar.NewWriter(io.MultiWriter(gz, diff, cnt))
	n, err := root.writeLayer(tw)
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	info.Entries = n
	info.UncompressedSize = cnt.n
	info.DiffID = digestOf(diff)
	info.LayerSize = int64(layer.Len())
	info.LayerDigest = digestBytes(layer.Bytes())

	img := ociImage{
		Created:      epoch,
		Architecture: "amd64",
		OS:           "linux",
		Config:       cfg.body(),
		RootFS:       ociRootFS{Type: "layers", DiffIDs: []string{info.DiffID}},
		History:      []ociHistory{{Created: epoch, CreatedBy: "github.com/podnet/podnet/test/cluster/images.Pack"}},
	}
	configJSON, err := json.Marshal(img)
	if err != nil {
		return nil, err
	}
	info.ConfigDigest = digestBytes(configJSON)

	man := ociManifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        ociDescriptor{MediaType: MediaTypeConfig, Digest: info.ConfigDigest, Size: int64(len(configJSON))},
		Layers:        []ociDescriptor{{MediaType: MediaTypeLayer, Digest: info.LayerDigest, Size: info.LayerSize}},
	}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	info.ManifestDigest = digestBytes(manJSON)

	idx := ociIndex{
		SchemaVersion: 2,
		MediaType:     MediaTypeIndex,
		Manifests: []ociDescriptor{{
			MediaType: MediaTypeManifest,
			Digest:    info.ManifestDigest,
			Size:      int64(len(manJSON)),
			Platform:  &ociPlatform{Architecture: "amd64", OS: "linux"},
			Annotations: map[string]string{
				AnnotationRefName:             name,
				AnnotationContainerdImageName: name,
			},
		}},
	}
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}

	blobs := map[string][]byte{
		info.ConfigDigest:   configJSON,
		info.LayerDigest:    layer.Bytes(),
		info.ManifestDigest: manJSON,
	}
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)

	out := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := out.WriteHeader(dirHeader(d, 0o755)); err != nil {
			return nil, err
		}
	}
	for _, d := range digests {
		if err := writeBytes(out, "blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d]); err != nil {
			return nil, err
		}
	}
	if err := writeBytes(out, "index.json", idxJSON); err != nil {
		return nil, err
	}
	if err := writeBytes(out, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, err
	}
	return info, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func digestBytes(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

var zeroTime = time.Unix(0, 0).UTC()

func baseHeader(name string, mode fs.FileMode) *tar.Header {
	m := int64(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return &tar.Header{Name: name, Mode: m, ModTime: zeroTime}
}

func dirHeader(name string, mode fs.FileMode) *tar.Header {
	h := baseHeader(name, mode)
	h.Typeflag = tar.TypeDir
	return h
}

func writeBytes(tw *tar.Writer, name string, b []byte) error {
	h := baseHeader(name, 0o644)
	h.Typeflag = tar.TypeReg
	h.Size = int64(len(b))
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// complete returns all entries including the implicit parent directories,
// checking that no entry lies beneath a file or symlink.
func (r *RootFS) complete() (map[string]*entry, []string, error) {
	all := make(map[string]*entry, len(r.entries))
	for p, e := range r.entries {
		all[p] = e
	}
	for p := range r.entries {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			e, ok := all[d]
			if !ok {
				all[d] = &entry{kind: kindDir, mode: 0o755}
				continue
			}
			if e.kind != kindDir {
				return nil, nil, fmt.Errorf("%q lies beneath %s %q", "/"+p, e.kind, "/"+d)
			}
		}
	}
	keys := make([]string, 0, len(all))
	for p := range all {
		keys = append(keys, p)
	}
	sort.Strings(keys)
	return all, keys, nil
}

func (r *RootFS) writeLayer(tw *tar.Writer) (int, error) {
	all, keys, err := r.complete()
	if err != nil {
		return 0, err
	}
	for _, p := range keys {
		e := all[p]
		switch e.kind {
		case kindDir:
			if err := tw.WriteHeader(dirHeader(p+"/", e.mode)); err != nil {
				return 0, err
			}
		case kindSymlink:
			h := baseHeader(p, 0o777)
			h.Typeflag = tar.TypeSymlink
			h.Linkname = e.link
			if err := tw.WriteHeader(h); err != nil {
				return 0, err
			}
		case kindFile:
			if e.isData {
				h := baseHeader(p, e.mode)
				h.Typeflag = tar.TypeReg
				h.Size = int64(len(e.data))
				if err := tw.WriteHeader(h); err != nil {
					return 0, err
				}
				if _, err := tw.Write(e.data); err != nil {
					return 0, err
				}
				continue
			}
			if err := writeHostFile(tw, p, e); err != nil {
				return 0, err
			}
		}
	}
	return len(keys), nil
}

func (e *entry) open() (fs.File, error) {
	if e.fsys != nil {
		return e.fsys.Open(e.host)
	}
	return os.Open(e.host)
}

func writeHostFile(tw *tar.Writer, p string, e *entry) error {
	f, err := e.open()
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	h := baseHeader(p, e.mode)
	h.Typeflag = tar.TypeReg
	h.Size = fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("%s: %w", e.host, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("%s changed size while being packed", e.host)
	}
	return nil
}

// Fingerprint is a digest of everything Pack's output depends on: the format
// version, the normalized ref, the configuration and every entry with the
// content of its file. Two calls with the same fingerprint produce identical
// archives, so a fingerprint stored next to an archive tells whether it is up
// to date.
func Fingerprint(ref string, root *RootFS, cfg ImageConfig) (string, error) {
	name, err := NormalizeRef(ref)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	cj, err := json.Marshal(cfg.body())
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", formatVersion, name, cj)
	_, keys, err := root.complete()
	if err != nil {
		return "", err
	}
	for _, p := range keys {
		e, ok := root.entries[p]
		if !ok {
			continue // implicit directory, derived from the others
		}
		fmt.Fprintf(h, "%d\x00%s\x00%o\x00%s\x00", e.kind, p, e.mode, e.link)
		if e.kind != kindFile {
			continue
		}
		if e.isData {
			fmt.Fprintf(h, "%s\x00", digestBytes(e.data))
			continue
		}
		fh := sha256.New()
		f, err := e.open()
		if err != nil {
			return "", err
		}
		_, err = io.Copy(fh, f)
		f.Close()
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00", digestOf(fh))
	}
	return digestOf(h), nil
}
