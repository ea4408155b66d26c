// Command podnet is the one podnet binary: the node agent, the CLI, the
// lab, and the CNI plugin. It acts as the CNI plugin whenever a runtime
// calls it as one (CNI_COMMAND is set), whatever name it is called by, so
// it can be installed as a copy or as a link named "podnet". That path is
// served by internal/cnimain's initializer, before the rest of the binary
// initializes; see there for why.
package main

import (
	"os"

	_ "github.com/podnet/podnet/internal/cnimain"

	"github.com/podnet/podnet/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
