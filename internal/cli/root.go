// Package cli holds podnet's command line: the agent, the lab and the
// troubleshooting commands.
package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Main runs the command line and returns the exit code.
func Main(args []string) int {
	root := &cobra.Command{
		Use:           "podnet",
		Short:         "podnet: Kubernetes pod networking, routing and a local lab",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(agentCmd(), labCmd(), policyCmd(), flowsCmd(), doctorCmd(), traceCmd(), connectivityCmd(), uiCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(*cobra.Command, []string) { fmt.Println("podnet", Version) },
	})
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		var ee exitError
		if asExit(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "podnet:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(os.Stderr, "podnet:", err)
		return 1
	}
	return 0
}

// exitError carries a specific exit code (for exec and probe).
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func asExit(err error, out *exitError) bool {
	e, ok := err.(exitError)
	if ok {
		*out = e
	}
	return ok
}
