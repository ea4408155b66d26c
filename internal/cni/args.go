package cni

import (
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// PodRef is the Kubernetes identity a runtime passes in CNI_ARGS.
type PodRef struct {
	Namespace, Name, UID, InfraContainerID string
}

func (p PodRef) String() string {
	if p.Name == "" {
		return ""
	}
	return p.Namespace + "/" + p.Name
}

// ParseArgs parses CNI_ARGS ("K=V;K=V"). Keys podnet does not know are
// ignored, as the spec asks (runtimes pass IgnoreUnknown and more); a pair
// without '=' is an error with code 4.
func ParseArgs(s string) (PodRef, error) {
	var p PodRef
	if s == "" {
		return p, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return p, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		case "K8S_POD_INFRA_CONTAINER_ID":
			p.InfraContainerID = v
		}
	}
	return p, nil
}
