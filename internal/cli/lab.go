package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/routing"
)

func labCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "lab",
		Short: "A local multi-node podnet cluster built from network namespaces",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the lab needs root (it creates network namespaces)")
			}
			return nil
		},
	}
	c.PersistentFlags().StringVar(&name, "name", "podnet", "lab name")
	c.AddCommand(labUpCmd(&name), labServeCmd(&name), labDownCmd(&name), labApplyCmd(&name, "apply"),
		labApplyCmd(&name, "delete"), labGetCmd(&name), labExecCmd(&name), labProbeCmd(&name), labDemoCmd(&name),
		labMetricsCmd(&name), labUICmd(&name))
	return c
}

func labMetricsCmd(name *string) *cobra.Command {
	var node string
	c := &cobra.Command{
		Use:   "metrics --node NODE",
		Short: "Print a node agent's Prometheus metrics",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := lab.NewClient(*name).Get("/v1/metrics?node=" + url.QueryEscape(node))
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(b)
			return err
		},
	}
	c.Flags().StringVar(&node, "node", "node1", "node name")
	return c
}

type upOptions struct {
	nodes, subnets int
	ipv6, dual     bool
	mode           string
	kubeconfig     string
	dataplane      string
}

func (o *upOptions) family() lab.Family {
	switch {
	case o.dual:
		return lab.Dual
	case o.ipv6:
		return lab.IPv6
	}
	return lab.IPv4
}

func (o *upOptions) flags(c *cobra.Command) {
	c.Flags().IntVar(&o.nodes, "nodes", 3, "number of nodes")
	c.Flags().BoolVar(&o.ipv6, "ipv6", false, "IPv6 only")
	c.Flags().BoolVar(&o.dual, "dual-stack", false, "IPv4 and IPv6")
	c.Flags().StringVar(&o.kubeconfig, "kubeconfig", "", "use this kube-apiserver instead of the embedded control plane")
	c.Flags().StringVar(&o.mode, "mode", "direct", "how nodes reach each other: direct, vxlan or auto")
	c.Flags().IntVar(&o.subnets, "subnets", 1, "spread the nodes over this many subnets joined by a router (needs vxlan or auto)")
	c.Flags().StringVar(&o.dataplane, "dataplane", "nftables", "nftables, or ebpf (adds the socket-level Service balancer)")
}

func labUpCmd(name *string) *cobra.Command {
	o := &upOptions{}
	c := &cobra.Command{
		Use:   "up",
		Short: "Create a lab and return once it is ready",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := labUp(*name, o); err != nil {
				return err
			}
			fmt.Printf("lab %q is up: %d nodes (%s, mode %s, %d subnet(s))\n", *name, o.nodes, o.family(), o.mode, o.subnets)
			return printGet(*name, "nodes", "wide", os.Stdout)
		},
	}
	o.flags(c)
	return c
}

// labUp starts the lab process in the background, detached from the
// terminal, and waits until it answers on its socket.
func labUp(name string, o *upOptions) error {
	if lab.Exists(name) {
		if lab.NewClient(name).Do("GET", "/v1/status", nil, nil) == nil {
			return fmt.Errorf("lab %q is already running (podnet lab down --name %s)", name, name)
		}
		// A crashed lab: clear what it left before starting afresh.
		if err := lab.Cleanup(name); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(lab.Dir(name), 0o755); err != nil {
		return err
	}
	logf, err := os.Create(lab.LogPath(name))
	if err != nil {
		return err
	}
	defer logf.Close()
	if _, err := routing.ParseMode(o.mode); err != nil {
		return err
	}
	if o.mode == string(routing.ModeDirect) && o.subnets > 1 {
		return fmt.Errorf("direct mode needs every node on one L2 segment: use --mode vxlan or --mode auto with --subnets %d", o.subnets)
	}
	args := []string{"lab", "serve", "--name", name, "--nodes", fmt.Sprint(o.nodes), "--mode", o.mode, "--subnets", fmt.Sprint(o.subnets)}
	if o.dual {
		args = append(args, "--dual-stack")
	} else if o.ipv6 {
		args = append(args, "--ipv6")
	}
	if o.dataplane != "" {
		args = append(args, "--dataplane", o.dataplane)
	}
	if o.kubeconfig != "" {
		abs, _ := filepath.Abs(o.kubeconfig)
		args = append(args, "--kubeconfig", abs)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	alive := func() bool {
		select {
		case <-exited:
			return false
		default:
			return true
		}
	}
	if err := lab.NewClient(name).WaitReady(120*time.Second, alive); err != nil {
		log, _ := os.ReadFile(lab.LogPath(name))
		lab.Cleanup(name)
		return fmt.Errorf("lab %q did not come up: %v\n%s", name, err, tail(string(log), 30))
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func labServeCmd(name *string) *cobra.Command {
	o := &upOptions{}
	c := &cobra.Command{
		Use:    "serve",
		Short:  "Run a lab in the foreground (what `lab up` starts in the background)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			l, err := lab.Up(ctx, lab.Options{Name: *name, Nodes: o.nodes, Family: o.family(), Mode: routing.Mode(o.mode), Subnets: o.subnets, Kubeconfig: o.kubeconfig, Dataplane: o.dataplane, Exe: self, Log: log})
			if err != nil {
				return err
			}
			log.Info("lab ready", "name", *name, "nodes", o.nodes)
			serr := l.Serve(ctx)
			log.Info("lab shutting down")
			if err := l.Close(); err != nil {
				log.Error("cleanup", "err", err)
			}
			return serr
		},
	}
	o.flags(c)
	return c
}

func labDownCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove every namespace, link, file and process of a lab (works after a crash too)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return labDown(*name)
		},
	}
}

func labDown(name string) error {
	if !lab.Exists(name) {
		// Nothing on disk; still sweep namespaces a crash may have left.
		if err := lab.Cleanup(name); err != nil {
			return err
		}
		fmt.Printf("lab %q is not running\n", name)
		return nil
	}
	lab.NewClient(name).Do("POST", "/v1/shutdown", nil, nil)
	if err := lab.Cleanup(name); err != nil {
		return err
	}
	fmt.Printf("lab %q is down\n", name)
	return nil
}

func readInput(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return os.ReadFile(file)
	}
	var all []byte
	ents, err := os.ReadDir(file)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(file, e.Name()))
		if err != nil {
			return nil, err
		}
		all = append(append(all, []byte("\n---\n")...), b...)
	}
	return all, nil
}

func labApplyCmd(name *string, verb string) *cobra.Command {
	var files []string
	var noWait bool
	c := &cobra.Command{
		Use:   verb + " -f FILE|DIR|-",
		Short: map[string]string{"apply": "Create or update Namespaces, Pods, Services and NetworkPolicies", "delete": "Delete the objects named in the files"}[verb],
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("-f is required")
			}
			var all []byte
			for _, f := range files {
				b, err := readInput(f)
				if err != nil {
					return err
				}
				all = append(append(all, []byte("\n---\n")...), b...)
			}
			return labObjects(*name, verb, all, !noWait, os.Stdout)
		},
	}
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, directory or - for stdin")
	if verb == "apply" {
		c.Flags().BoolVar(&noWait, "no-wait", false, "return without waiting for pods to run")
	}
	return c
}

func labObjects(name, verb string, data []byte, wait bool, out io.Writer) error {
	var resp struct {
		Done []string `json:"done"`
	}
	path := "/v1/" + verb
	if !wait {
		path += "?wait=false"
	}
	err := lab.NewClient(name).Do("POST", path, data, &resp)
	past := map[string]string{"apply": "applied", "delete": "deleted"}[verb]
	for _, d := range resp.Done {
		fmt.Fprintf(out, "%s %s\n", d, past)
	}
	return err
}

func labExecCmd(name *string) *cobra.Command {
	var ns, node string
	c := &cobra.Command{
		Use:   "exec POD [-n NAMESPACE] -- CMD...",
		Short: "Run a command inside a pod's (or with --node, a node's) network namespace",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/netns?namespace=" + ns + "&pod=" + args[0]
			argv := args[1:]
			if node != "" {
				q = "/v1/netns?node=" + node
				argv = args
			}
			if cmd.ArgsLenAtDash() >= 0 {
				argv = args[cmd.ArgsLenAtDash():]
			}
			if len(argv) == 0 {
				return fmt.Errorf("no command given (podnet lab exec POD -- CMD...)")
			}
			var resp struct{ Path string }
			if err := lab.NewClient(*name).Do("GET", q, nil, &resp); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			var code int
			err := netns.Do(resp.Path, func() error {
				c := exec.Command(argv[0], argv[1:]...)
				c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
				err := c.Run()
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
					return nil
				}
				return err
			})
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&ns, "namespace", "n", "default", "the pod's namespace")
	c.Flags().StringVar(&node, "node", "", "run in this node's namespace instead of a pod's")
	return c
}

func labProbeCmd(name *string) *cobra.Command {
	var req lab.ProbeRequest
	var output string
	c := &cobra.Command{
		Use:   "probe",
		Short: "Try every pod → pod (or → Service) connection with real packets and print the reachability matrix",
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := probe(*name, req)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			if req.ToServices {
				printServiceProbe(os.Stdout, res)
				return nil
			}
			printMatrix(os.Stdout, res)
			return nil
		},
	}
	c.Flags().IntVar(&req.Port, "port", 0, "port to try on every pod (default: each pod's declared ports)")
	c.Flags().StringVar(&req.Protocol, "protocol", "", "TCP or UDP (default: TCP with --port, else each declared port's)")
	c.Flags().StringVar(&req.Family, "family", "", "ipv4 or ipv6 (default: each pod's primary address)")
	c.Flags().BoolVar(&req.ToServices, "to-services", false, "try every Service's ClusterIPs and ports instead of the pods")
	c.Flags().BoolVar(&req.FromNodes, "from-nodes", false, "also try from every node's own namespace")
	c.Flags().DurationVar(&req.Timeout, "timeout", time.Second, "how long to wait for each connection")
	c.Flags().StringVar(&req.From, "from", "", "only this source (NAMESPACE/NAME or node/NAME)")
	c.Flags().StringVar(&req.To, "to", "", "only this target (NAMESPACE/NAME, or svc/NAMESPACE/NAME with --to-services)")
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}

func probe(name string, req lab.ProbeRequest) ([]lab.ProbeResult, error) {
	body, _ := json.Marshal(req)
	var res []lab.ProbeResult
	err := lab.NewClient(name).Do("POST", "/v1/probe", body, &res)
	return res, err
}
