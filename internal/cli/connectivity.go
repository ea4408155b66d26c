package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/lab"
)

func connectivityCmd() *cobra.Command {
	c := &cobra.Command{Use: "connectivity", Short: "Test every kind of network path with real connections"}
	var labName, output, kubeconfig, image, outside string
	test := &cobra.Command{
		Use:   "test [--lab NAME]",
		Short: "Deploy probe pods, a Service and a NetworkPolicy, try pod-to-pod (same node, across nodes), pod-to-Service (ClusterIP, NodePort), outside-to-NodePort, node-to-pod, pod-to-outside and policy allow/deny, print the results with latencies, and clean up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res []lab.PathCheck
			if labName != "" {
				if err := lab.NewClient(labName).Do("POST", "/v1/connectivity", nil, &res); err != nil {
					return err
				}
			} else {
				var err error
				if res, err = clusterConnectivity(cmd.Context(), kubeconfig, image, outside); err != nil {
					return err
				}
			}
			failed, skipped := 0, 0
			for _, r := range res {
				switch {
				case r.Skipped:
					skipped++
				case !r.Pass:
					failed++
				}
			}
			if output == "json" {
				json.NewEncoder(os.Stdout).Encode(res)
			} else {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "PATH\tFROM\tTO\tEXPECT\tRESULT\tLATENCY\tDETAIL")
				for _, r := range res {
					result := "pass"
					switch {
					case r.Skipped:
						result = "skip"
					case !r.Pass:
						result = "FAIL"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Path, r.From, r.To, r.Expect, result, r.Latency.Round(10*time.Microsecond), r.Detail)
				}
				w.Flush()
				fmt.Printf("%d passed, %d failed, %d skipped\n", len(res)-failed-skipped, failed, skipped)
			}
			if failed > 0 {
				return exitError{code: 1, msg: fmt.Sprintf("%d path(s) failed", failed)}
			}
			return nil
		},
	}
	test.Flags().StringVar(&labName, "lab", "", "test this lab (default: the cluster of $KUBECONFIG or --kubeconfig)")
	test.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster")
	test.Flags().StringVar(&image, "image", DefaultProbeImage, "probe pod image (agnhost: netexec and connect)")
	test.Flags().StringVar(&outside, "outside", "", "HOST:PORT outside the cluster that pods should reach (default: skip that path)")
	test.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	c.AddCommand(test)
	return c
}
