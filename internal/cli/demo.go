package cli

import (
	_ "embed"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/lab"
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
	return nil
}
