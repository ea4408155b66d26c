// Command kas is a test-only, multi-call binary holding the Kubernetes
// components a real cluster needs: kube-apiserver (with etcd embedded in
// the same process), kube-controller-manager, kube-scheduler, kubelet,
// kube-proxy and kubectl, built from the k8s.io/kubernetes module. It is
// not part of podnet: the tests in the main module start it as a
// subprocess (see internal/testenv/apiserver.go). Build it with build.sh.
//
//	kas apiserver [--etcd-dir=DIR] [--etcd-client-port=N] [--etcd-peer-port=N] [kube-apiserver flags]
//	kas controller-manager [kube-controller-manager flags]
//	kas scheduler [kube-scheduler flags]
//	kas kubelet [kubelet flags]
//	kas proxy [kube-proxy flags]
//	kas kubectl [kubectl arguments]
//
// Run through a link whose name is kubectl (ln -s kas kubectl), it is
// kubectl.
package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // CronJob time zones (as the upstream kube-apiserver and kube-controller-manager)

	"go.etcd.io/etcd/server/v3/embed"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins (as upstream kubectl)
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json (as the upstream components)
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics (as the upstream components)
	_ "k8s.io/component-base/metrics/prometheus/version"  // kubernetes_build_info (as the upstream components)
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanagerapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage:
  kas apiserver [--etcd-dir=DIR] [--etcd-client-port=N] [--etcd-peer-port=N] [kube-apiserver flags]
  kas controller-manager [kube-controller-manager flags]
  kas scheduler [kube-scheduler flags]
  kas kubelet [kubelet flags]
  kas proxy [kube-proxy flags]
  kas kubectl [kubectl arguments]     (or run it through a link named kubectl)
`

func main() {
	if filepath.Base(os.Args[0]) == "kubectl" {
		os.Exit(runKubectl(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "apiserver", "kube-apiserver":
		os.Exit(runAPIServer(args))
	case "controller-manager", "kube-controller-manager":
		os.Args = append([]string{"kube-controller-manager"}, args...)
		os.Exit(cli.Run(controllermanagerapp.NewControllerManagerCommand()))
	case "scheduler", "kube-scheduler":
		os.Args = append([]string{"kube-scheduler"}, args...)
		os.Exit(cli.Run(schedulerapp.NewSchedulerCommand()))
	case "kubelet":
		os.Args = append([]string{"kubelet"}, args...)
		os.Exit(cli.Run(kubeletapp.NewKubeletCommand(context.Background())))
	case "proxy", "kube-proxy":
		os.Args = append([]string{"kube-proxy"}, args...)
		os.Exit(cli.Run(proxyapp.NewProxyCommand()))
	case "kubectl":
		os.Exit(runKubectl(args))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kas: unknown command %q\n%s", sub, usage)
		os.Exit(2)
	}
}

// runKubectl runs kubectl as cmd/kubectl's main does: the verbosity is set
// before the command is built (it reads .kuberc and plugins), and errors
// are printed the kubectl way (CheckErr exits).
func runKubectl(args []string) int {
	os.Args = append([]string{"kubectl"}, args...)
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
		kubectlutil.CheckErr(err)
		return 1
	}
	return 0
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
