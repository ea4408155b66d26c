package cli

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/trace"
)

//go:embed demo.yaml
var demoYAML []byte

func labDemoCmd(name *string) *cobra.Command {
	o := &upOptions{}
	var keep bool
	c := &cobra.Command{
		Use:   "demo",
		Short: "Bring up a lab, run a sample app, probe it, print the matrix, and bring it down",
		Long: "Without --mode or --subnets, the demo runs twice: all nodes on one L2 fabric with direct routes,\n" +
			"then nodes in two subnets joined by a router, where auto mode uses VXLAN between subnets.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("mode") || cmd.Flags().Changed("subnets") || keep {
				return demo(*name, o, keep)
			}
			flat, routed := *o, *o
			flat.mode, flat.subnets = "direct", 1
			routed.mode, routed.subnets = "auto", 2
			fmt.Println("### Topology 1: every node on one L2 fabric, direct routes")
			if err := demo(*name, &flat, false); err != nil {
				return err
			}
			fmt.Println("\n### Topology 2: nodes in two subnets joined by a router; auto mode routes directly within a subnet and over VXLAN between subnets")
			return demo(*name, &routed, false)
		},
	}
	o.flags(c)
	c.Flags().BoolVar(&keep, "keep", false, "leave the lab running afterwards")
	return c
}

func demo(name string, o *upOptions, keep bool) (err error) {
	fmt.Printf("==> podnet lab up --name %s --nodes %d --mode %s --subnets %d (%s)\n", name, o.nodes, o.mode, o.subnets, o.family())
	if err := labUp(name, o); err != nil {
		return err
	}
	if !keep {
		defer func() {
			fmt.Printf("\n==> podnet lab down --name %s\n", name)
			if derr := labDown(name); err == nil {
				err = derr
			}
		}()
	}
	if err := printGet(name, "nodes", "", os.Stdout); err != nil {
		return err
	}
	fmt.Println("\n==> podnet lab apply -f demo.yaml (a web app, a DNS-like UDP service and a client, spread over the nodes)")
	if err := labObjects(name, "apply", demoYAML, true, os.Stdout); err != nil {
		return err
	}
	fmt.Println("\n==> podnet lab get pods -o wide")
	if err := printGet(name, "pods", "wide", os.Stdout); err != nil {
		return err
	}
	fmt.Println("\n==> podnet lab probe (every pod → every pod, on each target's declared ports, real packets)")
	res, err := probe(name, lab.ProbeRequest{})
	if err != nil {
		return err
	}
	printMatrix(os.Stdout, res)
	failed := 0
	for _, r := range res {
		if !r.Connected {
			failed++
			fmt.Printf("FAILED %s → %s %s/%d: %s\n", r.From, r.To, r.Protocol, r.Port, r.Error)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d connections failed", failed)
	}
	fmt.Println("every pod reached every other pod, on the same node and across nodes")

	fmt.Println("\n==> podnet lab get services -o wide")
	if err := printGet(name, "services", "wide", os.Stdout); err != nil {
		return err
	}
	fmt.Println("\n==> podnet lab probe --to-services --from-nodes (every pod and node → every ClusterIP, through podnet's service proxy)")
	res, err = probe(name, lab.ProbeRequest{ToServices: true, FromNodes: true})
	if err != nil {
		return err
	}
	printServiceProbe(os.Stdout, res)
	for _, r := range res {
		if !r.Connected {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d service connections failed", failed)
	}
	fmt.Println("every pod and every node reached every Service; ANSWERED BY shows the load balancing")
	return demoPolicy(name)
}

const demoPolicyYAML = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
`

// demoPolicy isolates the web pods so that only the client reaches them,
// shows the matrix change, the drops in the flow log with the policy
// behind them, and a trace of one dropped connection.
func demoPolicy(name string) error {
	fmt.Println("\n==> podnet lab apply -f policy.yaml (NetworkPolicy demo/web-from-client: the web pods accept only the client)")
	if err := labObjects(name, "apply", []byte(demoPolicyYAML), true, os.Stdout); err != nil {
		return err
	}
	fmt.Println("\n==> podnet lab probe --port 8080 (real packets; the policy is enforced in the kernel)")
	res, err := probe(name, lab.ProbeRequest{Port: 8080, Timeout: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	var shown []lab.ProbeResult
	wrong := 0
	for _, r := range res {
		if r.To == "demo/dns-1" {
			continue // serves UDP only
		}
		shown = append(shown, r)
		want := !strings.HasPrefix(r.To, "demo/web-") || r.From == "demo/client" || r.From == r.To
		if r.Connected != want {
			wrong++
			fmt.Printf("UNEXPECTED %s → %s: connected=%t\n", r.From, r.To, r.Connected)
		}
	}
	printMatrix(os.Stdout, shown)
	if wrong > 0 {
		return fmt.Errorf("%d connections disagree with the policy", wrong)
	}
	fmt.Println("only the client reaches the web pods now; everything else is unchanged")
	fmt.Println("\n==> podnet flows --lab " + name + " --verdict dropped (every drop, with the policy behind it)")
	time.Sleep(300 * time.Millisecond) // the drop reports trail the packets a little
	if err := printFlows(name, url.Values{"verdict": {"dropped"}}); err != nil {
		return err
	}
	fmt.Println("\n==> podnet trace --lab " + name + " demo/dns-1 demo/web-1:8080")
	body, _ := json.Marshal(lab.TraceRequest{From: "demo/dns-1", To: "demo/web-1", Port: 8080})
	var tr trace.Result
	if err := lab.NewClient(name).Do("POST", "/v1/trace", body, &tr); err != nil {
		return err
	}
	tr.Print(os.Stdout)
	return nil
}
