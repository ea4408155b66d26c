package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
)

// healthCheck is one Service's health check node port: load balancers
// probe it on every node to learn which nodes have local endpoints for an
// externalTrafficPolicy: Local Service. The answer matches kube-proxy's:
// 200 with the count of local endpoints, or 503 when there are none.
type healthCheck struct {
	port  uint16
	name  model.ServiceName
	local int
}

type hcServer struct {
	ln    net.Listener
	mu    sync.Mutex
	state healthCheck
}

func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if st.local == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{
		"service":             map[string]string{"namespace": st.name.Namespace, "name": st.name.Name},
		"localEndpoints":      st.local,
		"serviceProxyHealthy": true,
	})
}

// healthServers runs one listener per health check node port, in the
// node's network namespace.
type healthServers struct {
	nsPath  string
	log     *slog.Logger
	mu      sync.Mutex
	byKey   map[string]uint16
	servers map[uint16]*hcServer
}

func newHealthServers(nsPath string, log *slog.Logger) *healthServers {
	return &healthServers{nsPath: nsPath, log: log, byKey: map[string]uint16{}, servers: map[uint16]*hcServer{}}
}

// set records a Service's health check (a zero port removes it).
func (h *healthServers) set(key string, hc healthCheck) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.byKey[key]; ok && old != hc.port {
		if s := h.servers[old]; s != nil {
			s.ln.Close()
			delete(h.servers, old)
		}
		delete(h.byKey, key)
	}
	if hc.port == 0 {
		return
	}
	h.byKey[key] = hc.port
	s := h.servers[hc.port]
	if s == nil {
		ln, err := h.listen(hc.port)
		if err != nil {
			h.log.Warn("health check node port", "service", key, "port", hc.port, "err", err)
			return
		}
		s = &hcServer{ln: ln}
		h.servers[hc.port] = s
		go http.Serve(ln, s)
	}
	s.mu.Lock()
	s.state = hc
	s.mu.Unlock()
}

// listen opens the socket inside the node's namespace: a socket belongs
// to the namespace it was created in, whatever thread serves it later.
func (h *healthServers) listen(port uint16) (net.Listener, error) {
	var ln net.Listener
	open := func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}
	var err error
	if h.nsPath == "" {
		err = open()
	} else {
		err = netns.Do(h.nsPath, open)
	}
	return ln, err
}

func (h *healthServers) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, s := range h.servers {
		s.ln.Close()
		delete(h.servers, p)
	}
	h.byKey = map[string]uint16{}
}
