package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/lab"
)

// flowSource is one node's /flows endpoint.
type flowSource struct {
	node string
	get  func(ctx context.Context, query url.Values) (agent.FlowPage, error)
	seq  uint64
}

// followWait is how long the agent may hold one request of --follow.
const followWait = 25 * time.Second

// follow long-polls the node for flows after s.seq and sends each batch
// to out until ctx ends. A failed request is retried after a pause, so an
// agent that restarts is picked up again.
func (s *flowSource) follow(ctx context.Context, q url.Values, out chan<- []flow.Record) {
	for ctx.Err() == nil {
		qq := url.Values{}
		for k, v := range q {
			qq[k] = v
		}
		qq.Del("since")
		qq.Set("after", fmt.Sprint(max(s.seq, 1)))
		qq.Set("wait", followWait.String())
		page, err := s.get(ctx, qq)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(os.Stderr, "node %s: %v\n", s.node, err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		// An agent that restarted has a new ring with a lower sequence
		// number: taking it as it comes follows the new ring.
		s.seq = page.Seq
		if len(page.Flows) > 0 {
			select {
			case out <- page.Flows:
			case <-ctx.Done():
				return
			}
		}
	}
}

func flowsCmd() *cobra.Command {
	var labName, kubeconfig, node, from, to, verdict, since, output, namespace string
	var follow bool
	c := &cobra.Command{
		Use:   "flows [--from NS/POD] [--to NS/POD|NS/SERVICE|IP] [--verdict forwarded|dropped|rejected] [--since 5m] [--follow]",
		Short: "Show recent (and, with --follow, live) flows from every node, with verdicts and the policy behind each drop",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := flow.ParseFilter(from, to, verdict, since, time.Now()); err != nil {
				return err
			}
			if output != "table" && output != "json" {
				return fmt.Errorf("output %q: want table or json", output)
			}
			ctx := cmd.Context()
			var sources []*flowSource
			var err error
			if labName != "" {
				sources, err = labFlowSources(labName)
			} else {
				sources, err = clusterFlowSources(ctx, kubeconfig, namespace)
			}
			if err != nil {
				return err
			}
			if node != "" {
				var keep []*flowSource
				for _, s := range sources {
					if s.node == node {
						keep = append(keep, s)
					}
				}
				if len(keep) == 0 {
					return fmt.Errorf("no podnet agent on node %q", node)
				}
				sources = keep
			}
			q := url.Values{"from": {from}, "to": {to}, "verdict": {verdict}, "since": {since}}
			enc := json.NewEncoder(os.Stdout)
			print := func(recs []flow.Record) {
				for _, r := range recs {
					if output == "json" {
						enc.Encode(r)
					} else {
						fmt.Println(r)
					}
				}
			}
			// What every node holds now, in time order.
			var recs []flow.Record
			for _, s := range sources {
				page, err := s.get(ctx, q)
				if err != nil {
					fmt.Fprintf(os.Stderr, "node %s: %v\n", s.node, err)
					continue
				}
				s.seq = page.Seq
				recs = append(recs, page.Flows...)
			}
			sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
			print(recs)
			if !follow {
				return nil
			}
			// Then each node's new flows as they are recorded: one long
			// poll per node (the agent holds the request until a flow
			// matches), so a quiet node does not delay a busy one.
			out := make(chan []flow.Record)
			for _, s := range sources {
				go s.follow(ctx, q, out)
			}
			for {
				select {
				case <-ctx.Done():
					return nil
				case recs := <-out:
					print(recs)
				}
			}
		},
	}
	f := c.Flags()
	f.StringVar(&labName, "lab", "", "read the flows of this lab's nodes instead of a cluster's")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&namespace, "namespace", "kube-system", "namespace of the podnet DaemonSet")
	f.StringVar(&node, "node", "", "only this node")
	f.StringVar(&from, "from", "", "only flows from this pod (NS/POD), node (node/NAME) or address")
	f.StringVar(&to, "to", "", "only flows to this pod, Service (NS/NAME) or address")
	f.StringVar(&verdict, "verdict", "", "forwarded, dropped or rejected")
	f.StringVar(&since, "since", "", "only flows newer than this (e.g. 5m)")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new flows")
	f.StringVarP(&output, "output", "o", "table", "table or json (one record per line)")
	return c
}

func labFlowSources(name string) ([]*flowSource, error) {
	c := lab.NewClient(name)
	var nodes corev1.NodeList
	if err := c.Do("GET", "/v1/nodes", nil, &nodes); err != nil {
		return nil, err
	}
	var out []*flowSource
	for _, n := range nodes.Items {
		node := n.Name
		out = append(out, &flowSource{node: node, get: func(_ context.Context, q url.Values) (agent.FlowPage, error) {
			q.Set("node", node)
			var page agent.FlowPage
			err := c.Do("GET", "/v1/flows?"+q.Encode(), nil, &page)
			return page, err
		}})
	}
	return out, nil
}

// clusterFlowSources finds the podnet agents of a cluster and reaches
// each one's /flows through the apiserver's pod proxy, so nothing but a
// kubeconfig (with pods/proxy rights) is needed.
func clusterFlowSources(ctx context.Context, kubeconfig, namespace string) ([]*flowSource, error) {
	client, err := kubeClient(kubeconfig)
	if err != nil {
		return nil, err
	}
	pods, err := agentPods(ctx, client, namespace)
	if err != nil {
		return nil, err
	}
	var out []*flowSource
	for _, p := range pods {
		pod := p.Name
		out = append(out, &flowSource{node: p.Spec.NodeName, get: func(ctx context.Context, q url.Values) (agent.FlowPage, error) {
			params := map[string]string{}
			for k := range q {
				params[k] = q.Get(k)
			}
			var page agent.FlowPage
			b, err := client.CoreV1().Pods(namespace).ProxyGet("http", pod, "9941", "/flows", params).DoRaw(ctx)
			if err != nil {
				return page, err
			}
			return page, json.Unmarshal(b, &page)
		}})
	}
	return out, nil
}

// printFlows prints a lab's flows that pass the query, oldest first.
func printFlows(labName string, q url.Values) error {
	sources, err := labFlowSources(labName)
	if err != nil {
		return err
	}
	var recs []flow.Record
	for _, s := range sources {
		page, err := s.get(context.Background(), q)
		if err != nil {
			return err
		}
		recs = append(recs, page.Flows...)
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	for _, r := range recs {
		fmt.Println(r)
	}
	return nil
}
