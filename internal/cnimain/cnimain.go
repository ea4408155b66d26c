// Package cnimain runs the CNI plugin from a package initializer, before
// the rest of the multi-call binary is initialized.
//
// Why: podnet is one binary, and its agent and lab link client-go, whose
// package initializers (API scheme registration and the like) cost about
// 40 ms at every process start. A CNI plugin is a fresh process for every
// ADD and DEL, so that would triple pod network set-up time. Go initializes
// packages in dependency order, choosing among the ready ones by import
// path; this package depends only on the plugin's own small closure and its
// path sorts ahead of k8s.io/..., so its init runs before any client-go
// initializer. When CNI_COMMAND is set it serves the request and exits;
// otherwise it returns and the binary starts normally.
//
// TestCNIPathSkipsKubernetesInit in cmd/podnet checks that this holds.
package cnimain

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podnet/podnet/internal/cni"
)

// About is printed when the binary is run with CNI_COMMAND unset by a
// plugin-style invocation.
const About = "podnet CNI plugin"

func init() {
	if os.Getenv("CNI_COMMAND") == "" {
		return
	}
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, About)
	os.Exit(0)
}
