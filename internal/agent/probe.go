package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/netns"
)

// A live trace (`podnet trace --live`) in a cluster asks the agent on the
// source pod's node to make one real connection from inside that pod's
// network namespace; the caller then gathers the flows every node recorded
// for it. The agent finds the namespace from the kernel, not from the
// runtime: the pod's address routes to a host-side veth, whose peer's
// namespace has an id in the node's namespace, and the runtime's named
// namespaces (/run/netns, mounted into the agent's container) are
// matched against that id.

// DefaultPodNetNSDirs are where container runtimes name pods' network
// namespaces (containerd and CRI-O: /var/run/netns, which is /run/netns;
// the DaemonSet mounts the latter, as the runtime checks the propagation
// of the path as given, without following /var/run's link).
var DefaultPodNetNSDirs = []string{"/run/netns", "/var/run/netns"}

// ProbeAnswer is the outcome of one connection attempt from a pod.
type ProbeAnswer struct {
	Pod     string `json:"pod"`
	NetNS   string `json:"netns"`
	Target  string `json:"target"`
	Outcome string `json:"outcome"` // "connected", "answered", or "failed: ..."
	Took    string `json:"took"`
}

// Probe connects (TCP) or sends a datagram and waits for an answer (UDP)
// from the pod ns/name on this node to dst.
func (a *Agent) Probe(ctx context.Context, pod string, dst netip.AddrPort, proto string) (ProbeAnswer, error) {
	ans := ProbeAnswer{Pod: pod, Target: dst.String() + "/" + strings.ToUpper(proto)}
	ns, name, ok := strings.Cut(pod, "/")
	if !ok {
		return ans, fmt.Errorf("pod %q: want NAMESPACE/NAME", pod)
	}
	p, err := a.pod(ctx, ns, name)
	if err != nil {
		return ans, err
	}
	if p.Spec.NodeName != a.cfg.NodeName {
		return ans, fmt.Errorf("pod %s runs on node %s, not %s", pod, p.Spec.NodeName, a.cfg.NodeName)
	}
	if p.Spec.HostNetwork {
		return ans, fmt.Errorf("pod %s uses the node's network: probe from the node instead", pod)
	}
	var ip netip.Addr
	for _, pip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(pip.IP); err == nil && a.Is4() == dst.Addr().Is4() {
			ip = a
		}
	}
	if !ip.IsValid() {
		return ans, fmt.Errorf("pod %s has no address of the target's family", pod)
	}
	if ans.NetNS, err = a.podNetNS(ip); err != nil {
		return ans, fmt.Errorf("pod %s: %w", pod, err)
	}
	t0 := time.Now()
	ans.Outcome = probeFrom(ctx, ans.NetNS, dst, proto)
	ans.Took = time.Since(t0).Round(time.Microsecond).String()
	return ans, nil
}

// pod reads a pod from the agent's informer when it has one (the
// DaemonSet's role lists and watches pods, it does not get them), else
// from the API.
func (a *Agent) pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if a.names != nil && a.names.pods.HasSynced() {
		o, ok, err := a.names.pods.GetIndexer().GetByKey(ns + "/" + name)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("pod %s/%s not found", ns, name)
		}
		return o.(*corev1.Pod), nil
	}
	return a.cfg.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
}

// podNetNS finds the named network namespace that holds ip.
func (a *Agent) podNetNS(ip netip.Addr) (string, error) {
	routes, err := a.h.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", fmt.Errorf("no route to %s on this node: %v", ip, err)
	}
	l, err := a.h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", err
	}
	id := l.Attrs().NetNsID
	if l.Type() != "veth" || id < 0 {
		return "", fmt.Errorf("%s is reached through %s, not a veth into a pod's namespace", ip, l.Attrs().Name)
	}
	dirs := a.cfg.PodNetNSDirs
	if dirs == nil {
		dirs = DefaultPodNetNSDirs
	}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			f, err := os.Open(path)
			if err != nil {
				continue
			}
			got, err := a.h.GetNetNsIdByFd(int(f.Fd()))
			f.Close()
			if err == nil && got == id {
				return path, nil
			}
		}
	}
	return "", fmt.Errorf("the namespace behind %s (id %d) is not named in %s", l.Attrs().Name, id, strings.Join(dirs, ", "))
}

// probeFrom makes the attempt from inside the namespace at path.
func probeFrom(ctx context.Context, path string, dst netip.AddrPort, proto string) string {
	var outcome string
	err := netns.Do(path, func() error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		var d net.Dialer
		switch strings.ToUpper(proto) {
		case "TCP":
			c, err := d.DialContext(ctx, "tcp", dst.String())
			if err != nil {
				return err
			}
			c.Close()
			outcome = "connected"
		case "UDP":
			c, err := d.DialContext(ctx, "udp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write([]byte("podnet trace\n")); err != nil {
				return err
			}
			if _, err := c.Read(make([]byte, 512)); err != nil {
				return err
			}
			outcome = "answered"
		default:
			return fmt.Errorf("protocol %s: the probe sends TCP or UDP", proto)
		}
		return nil
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "failed: no answer within 1s"
		}
		return "failed: " + err.Error()
	}
	return outcome
}

// ProbeHandler serves POST /probe?pod=NS/NAME&dst=ADDR:PORT&protocol=TCP.
func ProbeHandler(a *Agent) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only: the probe sends real packets", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		dst, err := netip.ParseAddrPort(q.Get("dst"))
		if err != nil {
			http.Error(w, "dst: want ADDRESS:PORT", http.StatusBadRequest)
			return
		}
		proto := q.Get("protocol")
		if proto == "" {
			proto = "TCP"
		}
		ans, err := a.Probe(r.Context(), q.Get("pod"), dst, proto)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ans)
	})
}
