package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Image references, exactly as k8s.io/kubernetes v1.37.2 names them in
// test/utils/image/manifest.go (and kubeadm's constants for pause and CoreDNS),
// so that e2e pods find them with imagePullPolicy IfNotPresent and no
// registry remapping.
const (
	// PauseRef is the sandbox image: manifest.go Pause, kubeadm PauseVersion.
	// Kubelet 1.37 has no default of its own; set containerd's sandbox_image.
	PauseRef   = "registry.k8s.io/pause:3.10.2"
	AgnhostRef = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	BusyBoxRef = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	// GlibcDNSTestingRef was called jessie-dnsutils before.
	GlibcDNSTestingRef = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	NginxRef           = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	// CoreDNSRef is kubeadm's CoreDNSVersion for 1.37 (and
	// cluster/addons/dns/coredns). The e2e suite itself never names it.
	CoreDNSRef              = "registry.k8s.io/coredns/coredns:v1.14.6"
	DistrolessIptablesRef   = "registry.k8s.io/build-image/distroless-iptables:v0.9.9"
	RegressionIssue74839Ref = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.5"
	// PodnetRef is podnet's own image, "podnet/podnet:dev" fully qualified:
	// containerd's CRI plugin only finds images under normalized names.
	PodnetRef = "docker.io/podnet/podnet:dev"
)

// Binaries are the host files the catalogue packs. An empty path leaves out
// the images that need it; a path that does not exist is an error.
type Binaries struct {
	Agnhost string // k8s.io/kubernetes/test/images/agnhost, CGO_ENABLED=0
	CoreDNS string // github.com/coredns/coredns; also /coredns in agnhost and glibc-dns-testing
	Pause   string // ./pause, see BuildPause
	Podnet  string
	// RegressionIssue74839 is k8s.io/kubernetes/test/images/regression-issue-74839
	// (optional; one conntrack spec needs it).
	RegressionIssue74839 string
}

// Image is one entry of the catalogue.
type Image struct {
	Name   string // short name, e.g. "agnhost"
	Ref    string // normalized reference
	Root   *RootFS
	Config ImageConfig
	// UsedBy says which upstream e2e code needs the image.
	UsedBy string
	// Missing lists optional host tools that were not found and left out.
	Missing []string
}

// debianPackage names the Debian package providing a tool, for error messages.
var debianPackage = map[string]string{
	"bash": "bash", "dash": "dash", "sh": "dash",
	"dig": "bind9-dnsutils", "nslookup": "bind9-dnsutils", "host": "bind9-host",
	"nc": "netcat-openbsd", "nc.openbsd": "netcat-openbsd",
	"curl": "curl", "wget": "wget", "socat": "socat", "iperf": "iperf",
	"ip": "iproute2", "ss": "iproute2", "ping": "iputils-ping",
	"getent": "libc-bin", "nginx": "nginx", "nft": "nftables",
	"conntrack": "conntrack", "iptables": "iptables", "ipset": "ipset",
	"gawk": "gawk", "awk": "mawk", "ps": "procps", "kill": "procps",
	"grep": "grep", "sed": "sed", "find": "findutils", "xargs": "findutils",
	"hostname": "hostname",
}

// Tools is the command set of the busybox, agnhost and glibc-dns-testing
// images: Debian's dynamically linked binaries (static busybox applets that
// resolve names crash in this environment). The e2e specs run, through
// `sh -c`: curl, wget -qO-/-T, nc -u/-t/-w/-v/-z, dig, nslookup, getent hosts,
// seq, sleep, echo, test, cat, grep, touch, date, dd, timeout, iperf.
var Tools = []string{
	"sh", "dash", "bash",
	"[", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "dirname", "echo",
	"env", "expr", "false", "head", "id", "ln", "ls", "mkdir", "mv", "nproc",
	"printf", "readlink", "rm", "seq", "sleep", "sort", "stat", "tail", "tee",
	"test", "timeout", "touch", "tr", "true", "uname", "uniq", "wc", "whoami",
	"yes", "sync",
	"grep", "sed", "awk", "find", "xargs", "ps", "kill", "hostname",
	"curl", "wget", "nc", "nc.openbsd", "dig", "nslookup", "host", "getent",
	"ip", "ping",
}

// OptionalTools are added to the same images when the host has them.
var OptionalTools = []string{"socat", "iperf", "ss", "gawk", "egrep", "fgrep"}

// BuildPause compiles ./pause as a static binary at out. dir is the
// directory to run `go build` in; it must be inside the podnet module ("" for
// the current directory).
func BuildPause(ctx context.Context, dir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=",
		"-o", out, "github.com/podnet/podnet/test/cluster/images/pause")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building pause: %v\n%s", err, b)
	}
	return nil
}

// Catalogue returns the images of the test cluster. Images whose binary is
// not given are left out. The RootFS are not read until packed.
func Catalogue(b Binaries) ([]Image, error) {
	for _, p := range []string{b.Agnhost, b.CoreDNS, b.Pause, b.Podnet, b.RegressionIssue74839} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err != nil {
			return nil, err
		} else if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", p)
		}
	}
	var out []Image
	add := func(name, ref, usedBy string, cfg ImageConfig, build func(r *RootFS) ([]string, error)) error {
		r := NewRootFS()
		if err := addBase(r); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		missing, err := build(r)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		n, err := NormalizeRef(ref)
		if err != nil {
			return err
		}
		out = append(out, Image{Name: name, Ref: n, Root: r, Config: cfg, UsedBy: usedBy, Missing: missing})
		return nil
	}

	if b.Pause != "" {
		if err := add("pause", PauseRef,
			"every pod sandbox (containerd sandbox_image); Service endpoints latency; job fixtures",
			ImageConfig{Entrypoint: []string{"/pause"}, User: "65535:65535"},
			func(r *RootFS) ([]string, error) { return nil, r.AddBinary("/pause", b.Pause, 0o755) }); err != nil {
			return nil, err
		}
	}
	if b.Agnhost != "" {
		if err := add("agnhost", AgnhostRef,
			"nearly every [sig-network] spec: netexec/exec pods (curl, nc, wget), Networking Granular Checks, Services, "+
				"the musl DNS prober (dig, getent), the DNS configmap server (/coredns), NetworkPolicy (agnhost connect)",
			ImageConfig{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
				ExposedPorts: []string{"80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"}},
			func(r *RootFS) ([]string, error) {
				missing, err := addTools(r)
				if err != nil {
					return nil, err
				}
				if err := r.AddBinary("/agnhost", b.Agnhost, 0o755); err != nil {
					return nil, err
				}
				if err := r.AddSymlink("/agnhost-2", "agnhost"); err != nil {
					return nil, err
				}
				// The porter's TLS certificate and key, which build.sh puts
				// beside the binary; the Proxy specs dial its TLS ports.
				for _, f := range []string{"localhost.crt", "localhost.key"} {
					if host := filepath.Join(b.Agnhost+"-porter", f); fileExists(host) {
						if err := r.AddFile("/"+f, host, 0o644); err != nil {
							return nil, err
						}
					}
				}
				if b.CoreDNS != "" {
					if err := r.AddBinary("/coredns", b.CoreDNS, 0o755); err != nil {
						return nil, err
					}
				}
				if err := r.AddDir("/uploads", 0o755); err != nil {
					return nil, err
				}
				if err := r.AddBytes("/etc/passwd", []byte(passwd+"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"), 0o644); err != nil {
					return nil, err
				}
				if err := r.AddBytes("/etc/group", []byte(group+"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"), 0o644); err != nil {
					return nil, err
				}
				return missing, r.AddDir("/home/user-defined-in-image", 0o755)
			}); err != nil {
			return nil, err
		}
	}
	if err := add("busybox", BusyBoxRef,
		"conntrack specs (init container `sleep 15`, `nc boom-server 9000` loop); e2epod.MakePod/GetDefaultTestImage defaults",
		ImageConfig{Cmd: []string{"sh"}}, addTools); err != nil {
		return nil, err
	}
	if err := add("glibc-dns-testing", GlibcDNSTestingRef,
		"DNS specs: the glibc prober (`sh -c` with dig +notcp/+tcp, getent hosts, test, echo, seq, sleep)",
		ImageConfig{Cmd: []string{"bash"}},
		func(r *RootFS) ([]string, error) {
			missing, err := addTools(r)
			if err != nil {
				return nil, err
			}
			if b.CoreDNS != "" {
				if err := r.AddBinary("/coredns", b.CoreDNS, 0o755); err != nil {
					return nil, err
				}
			}
			return missing, nil
		}); err != nil {
		return nil, err
	}
	if err := add("nginx", NginxRef,
		"Endpoints/EndpointSlice conformance specs (pods that must run and expose a named port)",
		ImageConfig{Cmd: []string{"nginx", "-g", "daemon off;"}, ExposedPorts: []string{"80/tcp"}, StopSignal: "SIGQUIT"},
		addNginx); err != nil {
		return nil, err
	}
	if b.CoreDNS != "" {
		if err := add("coredns", CoreDNSRef, "the cluster DNS Deployment (every DNS spec)",
			ImageConfig{Entrypoint: []string{"/coredns"}, ExposedPorts: []string{"53/tcp", "53/udp"}},
			func(r *RootFS) ([]string, error) { return nil, r.AddBinary("/coredns", b.CoreDNS, 0o755) }); err != nil {
			return nil, err
		}
	}
	if err := add("distroless-iptables", DistrolessIptablesRef,
		"KubeProxy \"should set TCP CLOSE_WAIT timeout [Privileged]\" (hostNetwork pod: sleep, conntrack -L | grep)",
		ImageConfig{Cmd: []string{"sh"}}, addIptables); err != nil {
		return nil, err
	}
	if b.RegressionIssue74839 != "" {
		if err := add("regression-issue-74839", RegressionIssue74839Ref,
			"Conntrack \"proxy implementation should not be vulnerable to the invalid conntrack state bug [Privileged]\"",
			ImageConfig{Entrypoint: []string{"/regression-issue-74839"}},
			func(r *RootFS) ([]string, error) {
				return nil, r.AddBinary("/regression-issue-74839", b.RegressionIssue74839, 0o755)
			}); err != nil {
			return nil, err
		}
	}
	if b.Podnet != "" {
		if err := add("podnet", PodnetRef, "podnet's DaemonSet (the agent execs nft)",
			ImageConfig{Entrypoint: []string{"/podnet"}},
			func(r *RootFS) ([]string, error) {
				if err := r.AddBinary("/podnet", b.Podnet, 0o755); err != nil {
					return nil, err
				}
				return nil, addToolList(r, []string{"nft"})
			}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
	group = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"
	// glibc reads this to find "files" and "dns" (built into libc since 2.34).
	nsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n" +
		"networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n"
	hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
)

// addBase adds what every image has: /etc basics and the usual directories.
func addBase(r *RootFS) error {
	for _, d := range []struct {
		p    string
		mode os.FileMode
	}{{"/etc", 0o755}, {"/root", 0o700}, {"/run", 0o755}, {"/tmp", 0o777 | os.ModeSticky}, {"/var/tmp", 0o777 | os.ModeSticky}} {
		if err := r.AddDir(d.p, d.mode); err != nil {
			return err
		}
	}
	files := []struct{ p, data string }{
		{"/etc/passwd", passwd}, {"/etc/group", group}, {"/etc/nsswitch.conf", nsswitch},
		{"/etc/hosts", hosts}, {"/etc/resolv.conf", ""}, {"/etc/hostname", ""},
	}
	for _, f := range files {
		if err := r.AddBytes(f.p, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	if err := r.AddSymlink("/var/run", "/run"); err != nil {
		return err
	}
	// Debian's merged /usr: /bin -> usr/bin and so on, mirrored from the host
	// so that /bin/sh and the loader's /lib64 path exist.
	for _, p := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if _, err := os.Lstat(p); err == nil {
			if _, err := r.AddHostPath(p); err != nil {
				return err
			}
		}
	}
	// Service and protocol names for nc, getent and friends (Debian netbase).
	for _, p := range []string{"/etc/services", "/etc/protocols"} {
		if _, err := os.Stat(p); err == nil {
			if err := r.AddFile(p, p, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// addTools adds Tools (required) and OptionalTools.
func addTools(r *RootFS) ([]string, error) {
	if err := addToolList(r, Tools); err != nil {
		return nil, err
	}
	var missing []string
	for _, t := range OptionalTools {
		if _, err := r.LookTool(t); err != nil {
			missing = append(missing, t)
			continue
		}
		if err := r.AddTool(t); err != nil {
			return nil, err
		}
	}
	// iproute2 reads its tables from here (optional).
	for _, d := range []string{"/etc/iproute2", "/usr/share/iproute2"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			if err := r.AddHostTree(d); err != nil {
				return nil, err
			}
		}
	}
	return missing, nil
}

// addToolList adds the tools, failing with the Debian packages to install if
// any is missing.
func addToolList(r *RootFS, tools []string) error {
	var missing, pkgs []string
	seen := map[string]bool{}
	for _, t := range tools {
		if _, err := r.LookTool(t); err != nil {
			missing = append(missing, t)
			if p := debianPackage[t]; p != "" && !seen[p] {
				seen[p] = true
				pkgs = append(pkgs, p)
			}
			continue
		}
		if err := r.AddTool(t); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		sort.Strings(pkgs)
		return fmt.Errorf("host tools not found: %s (apt-get install %s)", strings.Join(missing, " "), strings.Join(pkgs, " "))
	}
	return nil
}

const nginxConf = `# Minimal nginx configuration for the e2e nginx image: serve / on port 80.
user www-data;
worker_processes 1;
error_log stderr notice;
pid /run/nginx.pid;

events {
	worker_connections 1024;
}

http {
	include /etc/nginx/mime.types;
	default_type application/octet-stream;
	access_log /dev/stdout;
	sendfile on;
	keepalive_timeout 65;

	server {
		listen 80 default_server;
		server_name localhost;
		root /usr/share/nginx/html;
		index index.html;
		location / {
			try_files $uri $uri/ =404;
		}
	}
}
`

const nginxIndex = `<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
`

func addNginx(r *RootFS) ([]string, error) {
	if err := addToolList(r, []string{"nginx", "sh", "cat", "ls", "sleep"}); err != nil {
		return nil, err
	}
	if err := r.AddBytes("/etc/nginx/nginx.conf", []byte(nginxConf), 0o644); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/etc/nginx/mime.types"); err != nil {
		return nil, fmt.Errorf("nginx mime.types: %w", err)
	}
	if err := r.AddFile("/etc/nginx/mime.types", "/etc/nginx/mime.types", 0o644); err != nil {
		return nil, err
	}
	if err := r.AddBytes("/usr/share/nginx/html/index.html", []byte(nginxIndex), 0o644); err != nil {
		return nil, err
	}
	// Compiled-in paths of Debian's nginx (nginx -V).
	for _, d := range []string{"/var/lib/nginx", "/var/log/nginx", "/var/lock", "/var/www"} {
		if err := r.AddDir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := r.AddSymlink("/var/log/nginx/access.log", "/dev/stdout"); err != nil {
		return nil, err
	}
	return nil, r.AddSymlink("/var/log/nginx/error.log", "/dev/stderr")
}

func addIptables(r *RootFS) ([]string, error) {
	if err := addToolList(r, []string{"sh", "cat", "grep", "sleep", "conntrack",
		"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}); err != nil {
		return nil, err
	}
	var missing []string
	for _, t := range []string{
		"iptables-nft", "iptables-nft-save", "iptables-nft-restore",
		"ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore",
		"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
		"ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore",
		"ipset",
	} {
		if _, err := r.LookTool(t); err != nil {
			missing = append(missing, t)
			continue
		}
		if err := r.AddTool(t); err != nil {
			return nil, err
		}
	}
	// iptables dlopens its match and target extensions.
	dirs, _ := filepath.Glob("/usr/lib/*-linux-gnu/xtables")
	if len(dirs) == 0 {
		return nil, errors.New("no xtables extension directory (apt-get install iptables)")
	}
	for _, d := range dirs {
		if err := r.AddHostTree(d); err != nil {
			return nil, err
		}
		sos, _ := filepath.Glob(filepath.Join(d, "*.so"))
		for _, so := range sos {
			if err := r.AddLibrariesOf(so); err != nil {
				return nil, err
			}
		}
	}
	return missing, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
