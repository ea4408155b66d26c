package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/doctor"
	"github.com/podnet/podnet/internal/lab"
)

func doctorCmd() *cobra.Command {
	var labName, kubeconfig, namespace, node, output string
	c := &cobra.Command{
		Use:   "doctor [--node NODE]",
		Short: "Check nodes for what breaks pod networking (forwarding, rp_filter, MTU, routes, overlay, foreign rules, conntrack, CNI install, API and clock) and say how to fix each problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var reports []doctor.Report
			var err error
			if labName != "" {
				reports, err = labDoctor(labName, node)
			} else {
				reports, err = clusterDoctor(cmd.Context(), kubeconfig, namespace, node)
			}
			if err != nil {
				return err
			}
			problems := 0
			for _, r := range reports {
				problems += r.Problems()
				if output == "json" {
					json.NewEncoder(os.Stdout).Encode(r)
				} else {
					r.Print(os.Stdout)
				}
			}
			if problems > 0 {
				return exitError{code: 1, msg: fmt.Sprintf("%d problem(s) found", problems)}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&labName, "lab", "", "check this lab's nodes instead of a cluster's")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&namespace, "namespace", "kube-system", "namespace of the podnet DaemonSet")
	f.StringVar(&node, "node", "", "only this node")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	return c
}

func labDoctor(name, node string) ([]doctor.Report, error) {
	c := lab.NewClient(name)
	var nodes corev1.NodeList
	if err := c.Do("GET", "/v1/nodes", nil, &nodes); err != nil {
		return nil, err
	}
	var out []doctor.Report
	for _, n := range nodes.Items {
		if node != "" && n.Name != node {
			continue
		}
		var r doctor.Report
		if err := c.Do("GET", "/v1/doctor?node="+n.Name, nil, &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node %q in lab %s", node, name)
	}
	return out, nil
}

// clusterDoctor asks every agent (through the apiserver's pod proxy) to
// check its node.
func clusterDoctor(ctx context.Context, kubeconfig, namespace, node string) ([]doctor.Report, error) {
	client, err := kubeClient(kubeconfig)
	if err != nil {
		return nil, err
	}
	pods, err := agentPods(ctx, client, namespace)
	if err != nil {
		return nil, err
	}
	var out []doctor.Report
	for _, p := range pods {
		if node != "" && p.Spec.NodeName != node {
			continue
		}
		b, err := client.CoreV1().Pods(namespace).ProxyGet("http", p.Name, "9941", "/doctor", nil).DoRaw(ctx)
		if err != nil {
			out = append(out, doctor.Report{Node: p.Spec.NodeName, Findings: []doctor.Finding{{Check: "agent", Severity: doctor.Error,
				Detail: "the agent does not answer: " + err.Error(), Fix: "kubectl -n " + namespace + " logs " + p.Name}}})
			continue
		}
		var r doctor.Report
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no podnet agent found in %s", namespace)
	}
	return out, nil
}
