// Command podnet is the one podnet binary: the node agent, the CLI, the
// lab, and the CNI plugin. It acts as the CNI plugin whenever a runtime
// calls it as one (CNI_COMMAND is set), whatever name it is called by, so
// it can be installed as a copy or as a link named "podnet".
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podnet/podnet/internal/cli"
	"github.com/podnet/podnet/internal/cni"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		skel.PluginMainFuncs(cni.Funcs(), cni.Versions, "podnet CNI plugin "+cli.Version)
		return
	}
	os.Exit(cli.Main(os.Args[1:]))
}
