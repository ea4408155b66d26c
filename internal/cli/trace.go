package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/trace"
)

func traceCmd() *cobra.Command {
	var labName, protocol, output, kubeconfig, namespace string
	var live bool
	c := &cobra.Command{
		Use:   "trace NS/POD DEST[:PORT] [--lab NAME]",
		Short: "Explain hop by hop what the dataplane does with a packet from a pod to a pod, Service or address",
		Long: "trace follows a packet from a pod: its route, the node-side veth, service\n" +
			"translation (naming every candidate backend), egress and ingress policy\n" +
			"(naming the policy and rule), the node's route and encapsulation, and the\n" +
			"destination node and pod. It is computed from the agents' desired state and\n" +
			"the kernels' routes; where they disagree it says so. --live also sends a\n" +
			"real connection and reports the kernel events it caused.\n\n" +
			"DEST is NAMESPACE/NAME (a pod, or else a Service) or an address, with an\n" +
			"optional :PORT (default: the pod's first declared port or the Service's first).",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			to, port, err := splitDest(args[1])
			if err != nil {
				return err
			}
			var res trace.Result
			if labName != "" {
				req := lab.TraceRequest{From: args[0], To: to, Port: port, Protocol: protocol, Live: live}
				body, _ := json.Marshal(req)
				if err := lab.NewClient(labName).Do("POST", "/v1/trace", body, &res); err != nil {
					return err
				}
			} else {
				env, err := newClusterEnv(cmd.Context(), kubeconfig, namespace)
				if err != nil {
					return err
				}
				var ep trace.Endpoints
				if res, ep, err = trace.Run(env, trace.Request{From: args[0], To: to, Port: uint16(port), Protocol: protocol}); err != nil {
					return err
				}
				if live {
					sources, err := clusterFlowSources(cmd.Context(), kubeconfig, namespace)
					if err != nil {
						return err
					}
					res.Live = env.live(args[0], ep, sources)
				}
			}
			if output == "json" {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			res.Print(os.Stdout)
			return nil
		},
	}
	c.Flags().StringVar(&labName, "lab", "", "trace in this lab (default: the cluster of $KUBECONFIG or --kubeconfig)")
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster")
	c.Flags().StringVar(&namespace, "namespace", "kube-system", "namespace of the podnet DaemonSet")
	c.Flags().StringVar(&protocol, "protocol", "TCP", "TCP, UDP or SCTP")
	c.Flags().BoolVar(&live, "live", false, "also send a real connection and report the kernel's events")
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return c
}

// splitDest splits "ns/name:port", "10.0.0.1:80", "[fd00::1]:80" or a
// bare name or address.
func splitDest(s string) (string, int, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().String(), int(ap.Port()), nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return s, 0, nil
	}
	if i := strings.LastIndex(s, ":"); i > 0 && !strings.Contains(s[i:], "/") {
		p, err := strconv.Atoi(s[i+1:])
		if err != nil || p < 1 || p > 65535 {
			return "", 0, fmt.Errorf("port in %q: want 1-65535", s)
		}
		return s[:i], p, nil
	}
	return s, 0, nil
}
