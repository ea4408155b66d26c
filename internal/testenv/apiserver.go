package testenv

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// APIServer is a real kube-apiserver, with etcd embedded in the same
// process, running on loopback for one test. It comes from bin/kas, a
// test-only binary built from the k8s.io/kubernetes module in test/kas (a
// separate Go module, so podnet itself does not depend on it).
type APIServer struct {
	// Kubeconfig is the path of a kubeconfig for the server (admin,
	// bearer token, TLS verification skipped), usable with clientcmd.
	Kubeconfig string
	// URL is https://127.0.0.1:PORT.
	URL string
	// Token is the bearer token of an admin user (group system:masters).
	Token string
	// Dir holds the keys, certificates, etcd data and the log.
	Dir string
	// LogFile collects the server's output across restarts.
	LogFile string

	bin  string
	args []string

	mu   sync.Mutex
	proc *kasProcess
}

type kasProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, set before done is closed
}

type apiServerConfig struct {
	serviceCIDRs string
	stateDir     string
}

// APIServerOption changes how StartAPIServer runs the server.
type APIServerOption func(*apiServerConfig)

// WithStateDir keeps the server's state (etcd data, keys, token) in dir
// instead of a temporary directory, and reuses what an earlier server left
// there: objects created by one run are there for the next. Benchmarks use
// it to grow a large cluster once (tens of minutes at 30,000 Services) and
// measure it many times. The ports are fresh each time; the kubeconfig is
// rewritten to match.
func WithStateDir(dir string) APIServerOption {
	return func(c *apiServerConfig) { c.stateDir = dir }
}

// WithDualStack makes the service cluster IP range dual-stack:
// 10.96.0.0/16 and fd00:10:96::/112.
func WithDualStack() APIServerOption {
	return func(c *apiServerConfig) { c.serviceCIDRs = "10.96.0.0/16,fd00:10:96::/112" }
}

const (
	apiServerReadyTimeout = 60 * time.Second
	apiServerStopGrace    = 5 * time.Second
)

var (
	kasOnce    sync.Once
	kasPath    string
	kasErr     error
	kasSkipMsg string
)

// kasBinary builds bin/kas once per test process (test/kas/build.sh; quick
// when nothing changed, minutes on an empty build cache) and returns its
// path. It skips the test if the build needs the Go module proxy and that
// is unreachable, and fails it if the build fails otherwise.
func kasBinary(t testing.TB) string {
	t.Helper()
	kasOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			kasErr = err
			return
		}
		cmd := exec.Command("sh", filepath.Join(root, "test", "kas", "build.sh"))
		cmd.Dir = filepath.Join(root, "test", "kas")
		out, err := cmd.CombinedOutput()
		if err != nil {
			if moduleProxyUnreachable(out) {
				kasSkipMsg = fmt.Sprintf("skipped: cannot build bin/kas, the Go module proxy is unreachable: %s", lastLines(out, 5))
				return
			}
			kasErr = fmt.Errorf("test/kas/build.sh: %v\n%s", err, out)
			return
		}
		kasPath = filepath.Join(root, "bin", "kas")
	})
	if kasSkipMsg != "" {
		t.Skip(kasSkipMsg)
	}
	if kasErr != nil {
		t.Fatalf("build bin/kas: %v", kasErr)
	}
	return kasPath
}

// moduleProxyUnreachable tells whether go build failed for want of the
// network (module download) rather than because of the code.
func moduleProxyUnreachable(out []byte) bool {
	s := string(out)
	for _, m := range []string{
		"dial tcp", "no such host", "i/o timeout", "network is unreachable",
		"connection refused", "TLS handshake timeout", "connection reset",
		"module lookup disabled", "server misbehaving", "proxyconnect",
	} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// StartAPIServer builds bin/kas if needed and starts a kube-apiserver on
// free loopback ports, waits until /readyz answers 200, and stops it when
// the test ends. Its service cluster IP range is 10.96.0.0/16 (see
// WithDualStack); it authorizes with RBAC, allows privileged pods, and,
// having no endpoint reconciler, leaves the kubernetes Service without
// endpoints.
func StartAPIServer(t testing.TB, opts ...APIServerOption) *APIServer {
	t.Helper()
	cfg := apiServerConfig{serviceCIDRs: "10.96.0.0/16"}
	for _, o := range opts {
		o(&cfg)
	}
	bin := kasBinary(t)
	dir := cfg.stateDir
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}

	ports, err := freePorts(3)
	if err != nil {
		t.Fatalf("free ports: %v", err)
	}
	port, etcdClient, etcdPeer := ports[0], ports[1], ports[2]

	saKey := filepath.Join(dir, "sa.key")
	tokens := filepath.Join(dir, "tokens.csv")
	token, err := reuseToken(tokens)
	if err != nil {
		t.Fatal(err)
	}
	type file struct {
		path string
		data []byte
	}
	var files []file
	if token == "" {
		// A fresh state: a new service-account key and admin token.
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		var tok [16]byte
		rand.Read(tok[:])
		token = hex.EncodeToString(tok[:])
		files = append(files, file{saKey, keyPEM}, file{tokens, []byte(token + `,admin,admin,"system:masters"` + "\n")})
	}
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	files = append(files, file{kubeconfig, []byte(kubeconfigYAML(url, token))})
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	a := &APIServer{
		Kubeconfig: kubeconfig,
		URL:        url,
		Token:      token,
		Dir:        dir,
		LogFile:    filepath.Join(dir, "kas.log"),
		bin:        bin,
		args: []string{
			"apiserver",
			"--etcd-dir=" + filepath.Join(dir, "etcd"),
			fmt.Sprintf("--etcd-client-port=%d", etcdClient),
			fmt.Sprintf("--etcd-peer-port=%d", etcdPeer),
			fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClient),
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", port),
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + saKey,
			"--service-account-signing-key-file=" + saKey,
			"--service-cluster-ip-range=" + cfg.serviceCIDRs,
			"--token-auth-file=" + tokens,
			"--authorization-mode=RBAC",
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--allow-privileged=true",
		},
	}
	t.Cleanup(a.Stop)
	a.start(t)
	return a
}

// KASBinary is the path of bin/kas, which also runs kube-proxy:
// KASBinary() proxy --kubeconfig=... --proxy-mode=nftables ...
func (a *APIServer) KASBinary() string { return a.bin }

// Stop stops the server: SIGTERM, then SIGKILL if it has not exited after
// 5 s. It does nothing if the server is not running. The test's cleanup
// calls it.
func (a *APIServer) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopLocked()
}

// Restart stops the server and starts it again on the same ports, with the
// same etcd data, keys and certificates: clients keep working once it is
// ready again, and the objects survive.
func (a *APIServer) Restart(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	a.stopLocked()
	a.mu.Unlock()
	a.start(t)
}

func (a *APIServer) stopLocked() {
	p := a.proc
	if p == nil {
		return
	}
	a.proc = nil
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(apiServerStopGrace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (a *APIServer) start(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil {
		t.Fatal("apiserver already running")
	}
	logf, err := os.OpenFile(a.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "==== %s %s %s\n", time.Now().Format(time.RFC3339Nano), a.bin, strings.Join(a.args, " "))
	cmd := exec.Command(a.bin, a.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &kasProcess{cmd: cmd, done: make(chan struct{})}

	// Pdeathsig fires when the thread that forked the child exits, not
	// the process: fork from a locked thread that lives until the child
	// has exited, so that the server dies with the test process but not
	// before.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			logf.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %s: %v", a.bin, err)
	}
	a.proc = p

	begin := time.Now()
	if err := a.waitReady(p); err != nil {
		a.stopLocked()
		t.Fatalf("apiserver not ready: %v\nlog %s (tail):\n%s", err, a.LogFile, a.logTail(60))
	}
	t.Logf("kube-apiserver at %s ready in %v", a.URL, time.Since(begin).Round(time.Millisecond))
}

func (a *APIServer) waitReady(p *kasProcess) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(apiServerReadyTimeout)
	last := errors.New("no answer yet")
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v", p.err)
		default:
		}
		req, _ := http.NewRequest("GET", a.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+a.Token)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("/readyz: %s", resp.Status)
		} else {
			last = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("after %v: %v", apiServerReadyTimeout, last)
}

func (a *APIServer) logTail(n int) string {
	b, err := os.ReadFile(a.LogFile)
	if err != nil {
		return err.Error()
	}
	return lastLines(b, n)
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// reuseToken reads the admin token of an earlier server's tokens file, ""
// when there is none.
func reuseToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	tok, _, ok := strings.Cut(string(b), ",")
	if !ok || tok == "" {
		return "", fmt.Errorf("%s: no token", path)
	}
	return tok, nil
}

func kubeconfigYAML(server, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kas
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: kas
  context:
    cluster: kas
    user: admin
current-context: kas
`, server, token)
}
