package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/netns"
)

// proc is one process the harness started, recorded on disk so that Down
// can stop it even when the harness that started it is gone.
type proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
}

type state struct {
	Procs  []proc   `json:"procs"`
	Mounts []string `json:"mounts"`
	Cgroup []string `json:"cgroups"`
}

func (c *Cluster) statePath() string { return filepath.Join(c.Dir, "state.json") }

func (c *Cluster) saveState() error {
	b, _ := json.MarshalIndent(c.st, "", "  ")
	return os.WriteFile(c.statePath(), b, 0o644)
}

func loadState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// start runs argv in the background inside the node's network namespace
// and, if mntPID is set, inside that process's mount namespace. The
// process gets its own session so it outlives the harness; its output goes
// to DIR/logs/NAME.log.
func (c *Cluster) start(name, netNS string, mntPID int, argv ...string) (int, error) {
	if err := os.MkdirAll(filepath.Join(c.Dir, "logs"), 0o755); err != nil {
		return 0, err
	}
	logf, err := os.Create(filepath.Join(c.Dir, "logs", name+".log"))
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	if mntPID > 0 {
		// nsenter into the node's mount namespace; the network namespace
		// comes from the thread we start it on.
		argv = append([]string{"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", mntPID), "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), "PATH="+c.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	run := cmd.Start
	if netNS != "" {
		run = func() error { return netns.Do(netNS, cmd.Start) }
	}
	if err := run(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	go cmd.Wait() // reap it if it dies while we run
	c.st.Procs = append(c.st.Procs, proc{Name: name, PID: cmd.Process.Pid})
	return cmd.Process.Pid, c.saveState()
}

// stopAll stops recorded processes, newest first: SIGTERM, then SIGKILL.
func stopAll(procs []proc) {
	for i := len(procs) - 1; i >= 0; i-- {
		syscall.Kill(procs[i].PID, syscall.SIGTERM)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range procs {
		for alive(p.PID) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(p.PID) {
			syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is gone for our purposes.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

// run executes argv in a node's network namespace and waits for it.
func (c *Cluster) run(netNS string, argv ...string) (string, error) {
	var out []byte
	err := netns.Do(netNS, func() error {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "PATH="+c.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// RunOnNode1 runs a command in node1's network namespace (where the
// apiserver and the admin kubeconfig are reachable) and returns its output.
func (c *Cluster) RunOnNode1(argv ...string) (string, error) { return c.run(c.Node1(), argv...) }
