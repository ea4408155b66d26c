package agent

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"

	"github.com/podnet/podnet/internal/routing"
)

// RouteAnswer is how this node routes one destination, and the route its
// desired state holds for it, for `podnet trace` against a cluster.
type RouteAnswer struct {
	Dev     string         `json:"dev,omitempty"`
	Gw      netip.Addr     `json:"gw,omitzero"`
	Desired *routing.Route `json:"desired,omitempty"`
	Error   string         `json:"error,omitempty"`
}

// RouteTo asks the node's kernel how it routes dst.
func (a *Agent) RouteTo(dst netip.Addr) RouteAnswer {
	var ans RouteAnswer
	rs, err := a.h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		ans.Error = "no route to " + dst.String()
	} else {
		if l, err := a.h.LinkByIndex(rs[0].LinkIndex); err == nil {
			ans.Dev = l.Attrs().Name
		}
		if rs[0].Gw != nil {
			gw, _ := netip.AddrFromSlice(rs[0].Gw)
			ans.Gw = gw.Unmap()
		}
	}
	if want, err := a.DesiredRoutes(); err == nil {
		for _, r := range want {
			if r.Dst.Contains(dst) {
				r := r
				ans.Desired = &r
				break
			}
		}
	}
	return ans
}

// RouteHandler serves RouteTo at /route?dst=ADDR.
func RouteHandler(a *Agent) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dst, err := netip.ParseAddr(r.URL.Query().Get("dst"))
		if err != nil {
			http.Error(w, "dst: want an address", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.RouteTo(dst))
	})
}
