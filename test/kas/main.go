// Command kas is a test-only, multi-call binary holding a real
// kube-apiserver (with etcd embedded in the same process) and kube-proxy,
// built from the k8s.io/kubernetes module. It is not part of podnet: the
// tests in the main module start it as a subprocess (see
// internal/testenv/apiserver.go). Build it with build.sh.
//
//	kas apiserver [--etcd-dir=DIR] [--etcd-client-port=N] [--etcd-peer-port=N] [kube-apiserver flags]
//	kas proxy [kube-proxy flags]
package main

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
)

const usage = `usage:
  kas apiserver [--etcd-dir=DIR] [--etcd-client-port=N] [--etcd-peer-port=N] [kube-apiserver flags]
  kas proxy [kube-proxy flags]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "apiserver", "kube-apiserver":
		os.Exit(runAPIServer(args))
	case "proxy", "kube-proxy":
		os.Args = append([]string{"kube-proxy"}, args...)
		os.Exit(cli.Run(proxyapp.NewProxyCommand()))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kas: unknown command %q\n%s", sub, usage)
		os.Exit(2)
	}
}

// etcdFlags are the flags kas apiserver takes for itself; everything else
// goes to kube-apiserver. dir is etcd's data directory (a temporary one,
// removed on a clean exit, when not given); etcd listens on
// 127.0.0.1:clientPort and 127.0.0.1:peerPort. --etcd-servers pointing at
// it is added unless given.
type etcdFlags struct {
	dir        string
	clientPort int
	peerPort   int
}

// splitFlags takes --etcd-dir, --etcd-client-port and --etcd-peer-port
// (as --name=value or --name value) out of args.
func splitFlags(args []string) (etcdFlags, []string, error) {
	f := etcdFlags{clientPort: 2379, peerPort: 2380}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			continue
		}
		switch name {
		case "etcd-dir", "etcd-client-port", "etcd-peer-port":
		default:
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return f, nil, fmt.Errorf("flag --%s needs a value", name)
			}
			i++
			val = args[i]
		}
		switch name {
		case "etcd-dir":
			f.dir = val
		case "etcd-client-port", "etcd-peer-port":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 || n > 65535 {
				return f, nil, fmt.Errorf("flag --%s: bad port %q", name, val)
			}
			if name == "etcd-client-port" {
				f.clientPort = n
			} else {
				f.peerPort = n
			}
		}
	}
	return f, rest, nil
}

func runAPIServer(args []string) int {
	ef, rest, err := splitFlags(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kas apiserver: %v\n", err)
		return 2
	}
	for _, a := range rest {
		if a == "--help" || a == "-h" || a == "--version" || strings.HasPrefix(a, "--version=") {
			// Answered by the command itself, which then exits: no etcd.
			os.Args = append([]string{"kube-apiserver"}, rest...)
			return cli.Run(apiserverapp.NewAPIServerCommand())
		}
	}
	if ef.dir == "" {
		d, err := os.MkdirTemp("", "kas-etcd-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "kas apiserver: %v\n", err)
			return 1
		}
		defer os.RemoveAll(d)
		ef.dir = d
	}
	etcd, err := startEtcd(ef)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kas apiserver: embedded etcd: %v\n", err)
		return 1
	}
	defer etcd.Close()

	hasEtcdServers := false
	for _, a := range rest {
		if a == "--etcd-servers" || strings.HasPrefix(a, "--etcd-servers=") {
			hasEtcdServers = true
		}
	}
	if !hasEtcdServers {
		rest = append([]string{fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", ef.clientPort)}, rest...)
	}
	os.Args = append([]string{"kube-apiserver"}, rest...)
	return cli.Run(apiserverapp.NewAPIServerCommand())
}

// startEtcd runs a single-member etcd on loopback, without fsync (tests
// only), and waits until it serves.
func startEtcd(f etcdFlags) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kas"
	cfg.Dir = f.dir
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "warn"
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", f.clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", f.peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("not ready after 60s")
	}
}
