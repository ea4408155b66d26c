package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/agent"
)

// Serve answers the lab's CLI on its unix socket until ctx ends or a
// client asks for shutdown. The API is small JSON over HTTP.
func (l *Lab) Serve(ctx context.Context) error {
	sock := SocketPath(l.opt.Name)
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"name": l.opt.Name, "nodes": len(l.nodes), "family": l.opt.Family, "embedded": l.embedded})
	})
	mux.HandleFunc("POST /v1/apply", func(w http.ResponseWriter, r *http.Request) {
		l.handleObjects(w, r, func(ctx context.Context, b []byte) ([]string, error) {
			objs, err := Decode(b)
			if err != nil {
				return nil, err
			}
			return l.Apply(ctx, objs, r.URL.Query().Get("wait") != "false")
		})
	})
	mux.HandleFunc("POST /v1/delete", func(w http.ResponseWriter, r *http.Request) {
		l.handleObjects(w, r, func(ctx context.Context, b []byte) ([]string, error) {
			objs, err := Decode(b)
			if err != nil {
				return nil, err
			}
			return l.Delete(ctx, objs)
		})
	})
	mux.HandleFunc("GET /v1/{kind}", func(w http.ResponseWriter, r *http.Request) {
		var obj any
		var err error
		lo := metav1.ListOptions{}
		switch r.PathValue("kind") {
		case "nodes":
			obj, err = l.client.CoreV1().Nodes().List(r.Context(), lo)
		case "pods":
			obj, err = l.client.CoreV1().Pods("").List(r.Context(), lo)
		case "services":
			obj, err = l.client.CoreV1().Services("").List(r.Context(), lo)
		case "endpointslices":
			obj, err = l.client.DiscoveryV1().EndpointSlices("").List(r.Context(), lo)
		case "networkpolicies":
			obj, err = l.client.NetworkingV1().NetworkPolicies("").List(r.Context(), lo)
		case "namespaces":
			obj, err = l.client.CoreV1().Namespaces().List(r.Context(), lo)
		default:
			http.Error(w, "unknown kind "+r.PathValue("kind"), http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, obj)
	})
	mux.HandleFunc("GET /v1/netns", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var p string
		var ok bool
		if node := q.Get("node"); node != "" {
			p, ok = l.NodeNetNS(node)
		} else {
			p, ok = l.PodNetNS(q.Get("namespace"), q.Get("pod"))
		}
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		writeJSON(w, map[string]string{"path": p})
	})
	mux.HandleFunc("POST /v1/probe", func(w http.ResponseWriter, r *http.Request) {
		var req ProbeRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, l.Probe(r.Context(), req))
	})
	mux.HandleFunc("GET /v1/metrics", func(w http.ResponseWriter, r *http.Request) {
		n := l.node(r.URL.Query().Get("node"))
		if n == nil {
			http.Error(w, "unknown node "+r.URL.Query().Get("node"), http.StatusNotFound)
			return
		}
		promhttp.HandlerFor(n.agent.Registry(), promhttp.HandlerOpts{}).ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /v1/doctor", func(w http.ResponseWriter, r *http.Request) {
		n := l.node(r.URL.Query().Get("node"))
		if n == nil {
			http.Error(w, "unknown node "+r.URL.Query().Get("node"), http.StatusNotFound)
			return
		}
		writeJSON(w, n.agent.Doctor(r.Context()))
	})
	mux.HandleFunc("POST /v1/trace", func(w http.ResponseWriter, r *http.Request) {
		var req TraceRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := l.Trace(r.Context(), req)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			writeJSON(w, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("POST /v1/connectivity", func(w http.ResponseWriter, r *http.Request) {
		res, err := l.Connectivity(r.Context())
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			writeJSON(w, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		n := l.node(r.URL.Query().Get("node"))
		if n == nil {
			http.Error(w, "unknown node "+r.URL.Query().Get("node"), http.StatusNotFound)
			return
		}
		agent.FlowsHandler(n.agent).ServeHTTP(w, r)
	})
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]bool{"ok": true})
		cancel()
	})
	srv := &http.Server{Handler: mux}
	go func() { <-ctx.Done(); srv.Close() }()
	err = srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (l *Lab) handleObjects(w http.ResponseWriter, r *http.Request, fn func(context.Context, []byte) ([]string, error)) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	done, err := fn(r.Context(), b)
	resp := map[string]any{"done": done}
	if err != nil {
		resp["error"] = err.Error()
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	writeJSON(w, resp)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Client talks to a running lab process.
type Client struct {
	name string
	hc   *http.Client
}

// NewClient returns a client for the lab called name.
func NewClient(name string) *Client {
	sock := SocketPath(name)
	return &Client{name: name, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

// Do sends a request and decodes a JSON answer into out (if non-nil).
func (c *Client) Do(method, path string, body []byte, out any) error {
	req, err := http.NewRequest(method, "http://lab"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if !Exists(c.name) {
			return fmt.Errorf("lab %q is not running (start it with: podnet lab up --name %s)", c.name, c.name)
		}
		return fmt.Errorf("lab %q: %w (log: %s)", c.name, err, LogPath(c.name))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			if out != nil {
				json.Unmarshal(b, out)
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("lab %q: %s", c.name, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Get returns the raw body of a GET (for text answers such as metrics).
func (c *Client) Get(path string) ([]byte, error) {
	resp, err := c.hc.Get("http://lab" + path)
	if err != nil {
		return nil, fmt.Errorf("lab %q: %w", c.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode >= 300 {
		err = fmt.Errorf("lab %q: %s", c.name, bytes.TrimSpace(b))
	}
	return b, err
}

// WaitReady polls the lab's status until it answers or timeout passes.
func (c *Client) WaitReady(timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c.Do("GET", "/v1/status", nil, nil) == nil {
			return nil
		}
		if alive != nil && !alive() {
			return fmt.Errorf("lab process exited")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("lab not ready after %s", timeout)
}
