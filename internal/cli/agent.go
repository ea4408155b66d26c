package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/routing"
)

func agentCmd() *cobra.Command {
	var (
		nodeName, kubeconfig, mode, confDir, binDir, dataDir, chain, healthAddr string
		mtu                                                                     int
		resync                                                                  time.Duration
	)
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the per-node agent (in a cluster: as a DaemonSet pod on the host network)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				nodeName = os.Getenv("NODE_NAME")
			}
			if nodeName == "" {
				return fmt.Errorf("--node-name (or NODE_NAME from the downward API) is required")
			}
			m, err := routing.ParseMode(mode)
			if err != nil {
				return err
			}
			var cfg *rest.Config
			if kubeconfig != "" {
				cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
			} else {
				cfg, err = rest.InClusterConfig()
			}
			if err != nil {
				return fmt.Errorf("kubernetes client config: %w", err)
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			if binDir != "" {
				if err := installBinary(binDir); err != nil {
					return fmt.Errorf("install CNI binary: %w", err)
				}
			}
			var chained []string
			if chain != "" {
				chained = strings.Split(chain, ",")
			}
			a, err := agent.New(agent.Config{
				NodeName: nodeName, Client: client, Mode: m, CNIConfDir: confDir,
				CNIDataDir: dataDir, MTU: mtu, Chain: chained, ResyncPeriod: resync,
				Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if healthAddr != "" {
				go serveHealth(healthAddr, a)
			}
			err = a.Run(ctx)
			// Leaving for good: the runtime must stop using a config that
			// nobody maintains.
			a.RemoveConflist()
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&nodeName, "node-name", "", "this node's name (default $NODE_NAME)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	f.StringVar(&mode, "mode", "direct", "how to reach other nodes: direct")
	f.StringVar(&confDir, "cni-conf-dir", "/etc/cni/net.d", "where to write the CNI conflist")
	f.StringVar(&binDir, "cni-bin-dir", "", "install the podnet binary here as the CNI plugin (empty: skip)")
	f.StringVar(&dataDir, "cni-data-dir", cni.DefaultDataDir, "the plugin's allocation store")
	f.StringVar(&chain, "cni-chain", "portmap", "reference plugins to chain after podnet (comma-separated: portmap,bandwidth,tuning)")
	f.IntVar(&mtu, "mtu", 1500, "pod interface MTU")
	f.DurationVar(&resync, "resync", 30*time.Second, "full resync period")
	f.StringVar(&healthAddr, "health-addr", "127.0.0.1:9941", "address for /healthz and /readyz (empty: off)")
	return c
}

func serveHealth(addr string, a *agent.Agent) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "first sync not applied yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	http.ListenAndServe(addr, mux)
}

// installBinary copies the running binary to dir/podnet atomically, as a
// DaemonSet's install step does.
func installBinary(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".podnet.tmp")
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "podnet"))
}
