package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/doctor"
	"github.com/podnet/podnet/internal/testenv"
)

// TestCheckAPIBreakage breaks what doctor's API check looks at, against a
// real kube-apiserver: the clocks (a network namespace has the host's
// clock, and so does the apiserver, so a proxy in between plays a server
// whose clock is off, shifting the time it stamps on the dry-run Lease),
// and the server itself (gone).
func TestCheckAPIBreakage(t *testing.T) {
	api := testenv.StartAPIServer(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	upstream, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	var skew atomic.Int64 // added to the server's stamp
	rp := httputil.NewSingleHostReverseProxy(upstream)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	direct := rp.Director
	rp.Director = func(r *http.Request) {
		direct(r)
		r.Header.Set("Authorization", "Bearer "+api.Token)
		r.Header.Set("Accept", "application/json") // so the stamp can be rewritten
	}
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodPost || !strings.Contains(resp.Request.URL.Path, "/leases") {
			return nil
		}
		var obj map[string]any
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &obj); err == nil {
			if meta, ok := obj["metadata"].(map[string]any); ok {
				if s, ok := meta["creationTimestamp"].(string); ok {
					if ts, err := time.Parse(time.RFC3339, s); err == nil {
						meta["creationTimestamp"] = ts.Add(time.Duration(skew.Load())).UTC().Format(time.RFC3339)
						b, _ = json.Marshal(obj)
					}
				}
			}
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	srv := httptest.NewTLSServer(rp)
	defer srv.Close()
	agentVia := func(host string) *Agent {
		c, err := kubernetes.NewForConfig(&rest.Config{Host: host, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
		if err != nil {
			t.Fatal(err)
		}
		return &Agent{cfg: Config{NodeName: "doctor-test", Client: c}}
	}
	a := agentVia(srv.URL)
	ctx := context.Background()

	if f := a.checkAPI(ctx); f.Severity != doctor.OK || !strings.Contains(f.Detail, "clocks agree") {
		t.Fatalf("healthy: %+v", f)
	}
	skew.Store(int64(-2 * time.Minute))
	if f := a.checkAPI(ctx); f.Severity != doctor.Warn || !strings.Contains(f.Detail, "off the server's") || f.Fix == "" {
		t.Errorf("server clock 2 minutes behind: %+v", f)
	}
	skew.Store(int64(2 * time.Minute))
	if f := a.checkAPI(ctx); f.Severity != doctor.Warn {
		t.Errorf("server clock 2 minutes ahead: %+v", f)
	}
	skew.Store(0)
	if f := a.checkAPI(ctx); f.Severity != doctor.OK {
		t.Errorf("mended: %+v", f)
	}

	// No server at the address: an error, with what to check.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "https://" + ln.Addr().String()
	ln.Close()
	if f := agentVia(gone).checkAPI(ctx); f.Severity != doctor.Error || f.Fix == "" {
		t.Errorf("no API server: %+v", f)
	}
}
