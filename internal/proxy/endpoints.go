package proxy

import (
	"slices"

	"github.com/podnet/podnet/internal/model"
)

// Categorize picks the endpoints one node sends a Service port's traffic
// to, with kube-proxy's rules, so that a cluster behaves the same whichever
// proxy runs it:
//
//   - cluster endpoints are the ready ones; if topology hints are usable
//     (every ready endpoint carries hints, and some are for this node's
//     zone) only those hinted for this zone. When no endpoint is ready,
//     serving endpoints that are terminating take their place, so that
//     connections drain gracefully during a rollout instead of failing.
//   - local endpoints are the ready ones on this node, or, if there are
//     none, the serving-and-terminating ones on this node.
func Categorize(eps []model.Endpoint, self Self) (cluster, local []model.Endpoint) {
	topo := usableHints(eps, self.Zone)
	cluster = filter(eps, func(e model.Endpoint) bool {
		return e.Ready && (!topo || slices.Contains(e.HintZones, self.Zone))
	})
	if len(cluster) == 0 {
		cluster = filter(eps, func(e model.Endpoint) bool { return e.Serving && e.Terminating })
	}
	local = filter(eps, func(e model.Endpoint) bool { return e.Ready && e.NodeName == self.Name })
	if len(local) == 0 {
		local = filter(eps, func(e model.Endpoint) bool { return e.Serving && e.Terminating && e.NodeName == self.Name })
	}
	return cluster, local
}

// usableHints reports whether zone hints may narrow the cluster endpoints.
// A single ready endpoint without hints means the controller has not (or
// no longer) hinted the slice, and then all endpoints are used; so is
// everything when none is hinted for our zone, rather than black-holing.
func usableHints(eps []model.Endpoint, zone string) bool {
	if zone == "" {
		return false
	}
	any, mine := false, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		if e.HintZones == nil {
			return false
		}
		any = true
		mine = mine || slices.Contains(e.HintZones, zone)
	}
	return any && mine
}

func filter(eps []model.Endpoint, keep func(model.Endpoint) bool) []model.Endpoint {
	var out []model.Endpoint
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}
