// Package ui serves podnet's web view: one page, its script and style,
// all embedded in the binary (the page loads nothing from elsewhere, and
// its Content-Security-Policy forbids it), and a small JSON API the page
// polls. Where the data comes from (a lab, a cluster) is the Source's
// business.
package ui

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"time"

	"github.com/podnet/podnet/internal/flow"
)

//go:embed assets
var assets embed.FS

// Node, Pod and Service are what the page shows.
type Node struct {
	Name     string   `json:"name"`
	Address  string   `json:"address"`
	PodCIDRs []string `json:"podCIDRs"`
}

type Pod struct {
	Name   string   `json:"name"` // namespace/name
	Node   string   `json:"node"`
	IPs    []string `json:"ips"`
	Labels string   `json:"labels"`
}

type Service struct {
	Name      string   `json:"name"`
	ClusterIP string   `json:"clusterIP"`
	Ports     string   `json:"ports"`
	Endpoints []string `json:"endpoints"`
}

// State is the cluster as the page draws it.
type State struct {
	Nodes    []Node    `json:"nodes"`
	Pods     []Pod     `json:"pods"`
	Services []Service `json:"services"`
}

// Source supplies the page's data.
type Source interface {
	State(ctx context.Context) (State, error)
	Flows(ctx context.Context) ([]flow.Record, error)
}

// csp allows only this origin: no external script, style, font or image.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// Handler serves the page and its API.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	sub, _ := fs.Sub(assets, "assets")
	files := http.FileServer(http.FS(sub))
	mux.Handle("/", files)
	mux.HandleFunc("/api/state", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		st, err := src.State(ctx)
		reply(w, st, err)
	})
	mux.HandleFunc("/api/flows", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		fl, err := src.Flows(ctx)
		if fl == nil {
			fl = []flow.Record{}
		}
		reply(w, fl, err)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		mux.ServeHTTP(w, r)
	})
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	json.NewEncoder(w).Encode(v)
}
