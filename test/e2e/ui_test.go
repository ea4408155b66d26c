package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestWebUI serves podnet lab ui, loads it in a real headless Chromium
// (which may reach nothing but loopback), and checks that the map shows
// the lab's pods with the forced drop in red, that the flow table lists
// it, that the page has an accessible structure, and that it depends on
// nothing outside the binary.
func TestWebUI(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (make deps installs it)")
	}
	l := startLab(t)
	l.apply(explainYAML)
	l.probe("--from", "prod/web-1", "--to", "prod/db", "--port", "5432")
	l.probe("--from", "prod/batch", "--to", "prod/db", "--port", "5432", "--timeout", "300ms")

	ui := exec.Command(l.bin, "lab", "ui", "--name", l.name, "--addr", "127.0.0.1:0")
	stdout, _ := ui.StdoutPipe()
	if err := ui.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { ui.Process.Kill(); ui.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`).FindString(line)
	if url == "" {
		t.Fatalf("no address in %q", line)
	}

	// Nothing outside the binary: no absolute URL the browser would
	// fetch, and a policy that forbids other origins anyway.
	for _, asset := range []string{"", "app.js", "style.css"} {
		resp, err := http.Get(url + asset)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: Content-Security-Policy %q", asset, csp)
		}
		body := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "")
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`).FindString(body); m != "" {
			t.Errorf("%s refers to %s", asset, m)
		}
	}

	var dom string
	eventually(t, 20*time.Second, "page rendered with the drop", func() (bool, string) {
		out, err := exec.Command(browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=4000", "--dump-dom", url).Output()
		if err != nil {
			return false, err.Error()
		}
		dom = string(out)
		return strings.Contains(dom, `data-edge="prod/batch -&gt; prod/db"`) || strings.Contains(dom, `data-edge="prod/batch -> prod/db"`), dom
	})
	for _, want := range []string{
		`data-pod="prod/db"`, `data-pod="prod/web-1"`, `data-pod="prod/batch"`, // the map shows the pods
		`class="drop" data-edge="prod/batch -`, // the drop is a red edge
		`class="ok" data-edge="prod/web-1 -`,   // the allowed flow is not
		`<tr class="dropped">`,                 // and a red row in the flow table
		"ingress isolated by prod/db-allow-app",
		"3 nodes, 3 pods",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Accessible structure: landmarks, a heading hierarchy, captioned
	// tables with header cells, labelled controls, a text alternative for
	// the map.
	for _, want := range []string{`<html lang="en">`, "<main>", `<nav aria-label=`, "<h1>", "<h2 id=", "<caption>", `<th scope="col">`,
		`<label for="q">`, `<label for="verdict">`, `role="img" aria-labelledby=`, `aria-live="polite"`, `aria-label="Connections"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks accessible structure %q", want)
		}
	}
}
