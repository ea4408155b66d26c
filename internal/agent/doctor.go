package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/doctor"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/routing"
)

// Doctor checks the node against what podnet needs and against the desired
// state, and says how to fix each problem. It only reads.
func (a *Agent) Doctor(ctx context.Context) doctor.Report {
	r := doctor.Report{Node: a.cfg.NodeName}
	add := func(f doctor.Finding) { r.Findings = append(r.Findings, f) }
	st, self, up, _, err := a.desired()
	if err != nil {
		add(doctor.Finding{Check: "state", Severity: doctor.Error, Detail: "cannot compute the desired state: " + err.Error(),
			Fix: "check that the node's Node object exists and that its InternalIP is on an interface of this node"})
		add(a.checkAPI(ctx))
		return r
	}
	v4, v6 := false, false
	for _, c := range self.PodCIDRs {
		v4, v6 = v4 || c.Addr().Is4(), v6 || c.Addr().Is6()
	}
	for _, f := range a.checkSysctls(up, v4, v6) {
		add(f)
	}
	add(a.checkMTU(up, a.podMTU(*self, up), st))
	add(a.checkRoutes(st))
	add(a.checkOverlay(st))
	add(a.checkForeign(ctx))
	add(a.checkConntrack())
	add(a.checkCNI())
	add(a.checkAPI(ctx))
	return r
}

// inNS runs fn in the node's namespace, where /proc/sys/net and
// /proc/thread-self/net describe the node.
func (a *Agent) inNS(fn func() error) error {
	if a.cfg.NetNS == "" {
		return fn()
	}
	return netns.Do(a.cfg.NetNS, fn)
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// podLinks lists the node-side pod veths.
func (a *Agent) podLinks() []string {
	links, _ := a.h.LinkList()
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, cni.HostIfPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// checkSysctls: forwarding on, and no strict reverse-path filter on the
// uplink or the pod veths (routed pod traffic often enters on one device
// and is answered through another, which strict mode drops).
func (a *Agent) checkSysctls(up uplink, v4, v6 bool) []doctor.Finding {
	var fs []doctor.Finding
	devs := append(append([]string{}, up.names...), a.podLinks()...)
	var badFwd, badRP []string
	a.inNS(func() error {
		if v4 {
			if v, err := readInt("/proc/sys/net/ipv4/ip_forward"); err == nil && v != 1 {
				badFwd = append(badFwd, "net.ipv4.ip_forward")
			}
		}
		if v6 {
			if v, err := readInt("/proc/sys/net/ipv6/conf/all/forwarding"); err == nil && v != 1 {
				badFwd = append(badFwd, "net.ipv6.conf.all.forwarding")
			}
		}
		all, _ := readInt("/proc/sys/net/ipv4/conf/all/rp_filter")
		for _, d := range devs {
			v, err := readInt("/proc/sys/net/ipv4/conf/" + d + "/rp_filter")
			if err == nil && max(all, v) == 1 {
				badRP = append(badRP, d)
			}
		}
		if all == 1 && len(badRP) > 0 {
			badRP = append([]string{"all"}, badRP...)
		}
		return nil
	})
	if len(badFwd) > 0 {
		var fix []string
		for _, k := range badFwd {
			fix = append(fix, "sysctl -w "+k+"=1")
		}
		fs = append(fs, doctor.Finding{Check: "forwarding", Severity: doctor.Error, Detail: strings.Join(badFwd, ", ") + " is off: the node does not route pod traffic",
			Fix: strings.Join(fix, "\n") + "\n(and find what turned it off: podnet's plugin turns it on at every pod start)"})
	} else {
		fs = append(fs, doctor.Finding{Check: "forwarding", Severity: doctor.OK, Detail: "IP forwarding is on"})
	}
	if len(badRP) > 0 {
		var fix []string
		for _, d := range badRP {
			fix = append(fix, "sysctl -w net.ipv4.conf."+d+".rp_filter=2")
		}
		fs = append(fs, doctor.Finding{Check: "rp_filter", Severity: doctor.Error,
			Detail: "strict reverse-path filtering (rp_filter=1) on " + strings.Join(badRP, ", ") + " drops pod traffic that returns by another path",
			Fix:    strings.Join(fix, "\n") + "\n(loose mode, 2, keeps spoofing protection)"})
	} else {
		fs = append(fs, doctor.Finding{Check: "rp_filter", Severity: doctor.OK, Detail: fmt.Sprintf("no strict reverse-path filter on the uplink or %d pod interfaces", len(devs)-len(up.names))})
	}
	return fs
}

// checkMTU: overlay devices at the uplink's MTU less the encapsulation,
// and no pod interface larger than the pods' MTU (which fits every path).
func (a *Agent) checkMTU(up uplink, podMTU int, st routing.State) doctor.Finding {
	var bad []string
	for _, d := range st.Devices {
		l, err := a.h.LinkByName(d.Name)
		if err == nil && l.Attrs().MTU != d.MTU {
			bad = append(bad, fmt.Sprintf("overlay %s has MTU %d, want %d (uplink %d less encapsulation)", d.Name, l.Attrs().MTU, d.MTU, up.mtu))
		}
	}
	for _, name := range a.podLinks() {
		l, err := a.h.LinkByName(name)
		if err == nil && l.Attrs().MTU > podMTU {
			bad = append(bad, fmt.Sprintf("pod interface %s has MTU %d, more than the pod MTU %d", name, l.Attrs().MTU, podMTU))
		}
	}
	if len(bad) > 0 {
		return doctor.Finding{Check: "mtu", Severity: doctor.Error, Detail: strings.Join(bad, "; "),
			Fix: fmt.Sprintf("ip link set dev DEVICE mtu %d for pod interfaces (or recreate the pods); podnet resets overlay devices on its next sync — if it does not, check the agent's log", podMTU)}
	}
	return doctor.Finding{Check: "mtu", Severity: doctor.OK, Detail: fmt.Sprintf("uplink %d, pods %d, %d overlay device(s) consistent", up.mtu, podMTU, len(st.Devices))}
}

func diffStrings(want, have []string) (missing, stale []string) {
	for _, w := range want {
		if !slices.Contains(have, w) {
			missing = append(missing, w)
		}
	}
	for _, h := range have {
		if !slices.Contains(want, h) {
			stale = append(stale, h)
		}
	}
	return missing, stale
}

func drift(check, what string, missing, stale []string) doctor.Finding {
	if len(missing)+len(stale) == 0 {
		return doctor.Finding{Check: check, Severity: doctor.OK, Detail: what + " match the desired state"}
	}
	var d []string
	if len(missing) > 0 {
		d = append(d, "missing: "+strings.Join(missing, "; "))
	}
	if len(stale) > 0 {
		d = append(d, "stale: "+strings.Join(stale, "; "))
	}
	return doctor.Finding{Check: check, Severity: doctor.Error, Detail: what + " differ from the desired state: " + strings.Join(d, "; "),
		Fix: "the agent repairs this on its next sync (every 30 s, or at once on a Node change); if it persists, something else is changing them: look for another network agent on the node and at the agent's log"}
}

func (a *Agent) checkRoutes(st routing.State) doctor.Finding {
	have, err := a.routes.Installed()
	if err != nil {
		return doctor.Finding{Check: "routes", Severity: doctor.Error, Detail: "cannot list routes: " + err.Error()}
	}
	var w, h []string
	for _, r := range st.Routes {
		r.Peer = "" // the kernel does not know which node a route is for
		w = append(w, r.String())
	}
	for _, r := range have {
		h = append(h, r.String())
	}
	m, s := diffStrings(w, h)
	return drift("routes", fmt.Sprintf("%d route(s) to peer pod ranges", len(w)), m, s)
}

func (a *Agent) checkOverlay(st routing.State) doctor.Finding {
	neigh, fdb, err := a.overlay.Installed()
	if err != nil {
		return doctor.Finding{Check: "overlay", Severity: doctor.Error, Detail: "cannot list neighbours: " + err.Error()}
	}
	var w, h []string
	for _, n := range st.Neighbours {
		w = append(w, "neighbour "+n.String())
	}
	for _, f := range st.FDB {
		w = append(w, "fdb "+f.String())
	}
	for _, n := range neigh {
		h = append(h, "neighbour "+n.String())
	}
	for _, f := range fdb {
		h = append(h, "fdb "+f.String())
	}
	m, s := diffStrings(w, h)
	return drift("overlay", fmt.Sprintf("%d neighbour and FDB entries", len(w)), m, s)
}

// checkForeign looks for tables that would fight podnet's: another
// service proxy (kube-proxy's tables or iptables chains) while podnet's
// proxy is on, and base chains of other tables that drop by default on the
// hooks podnet uses.
func (a *Agent) checkForeign(ctx context.Context) doctor.Finding {
	var out []byte
	err := a.inNS(func() (err error) {
		out, err = exec.CommandContext(ctx, "nft", "-j", "list", "chains").Output()
		return err
	})
	if err != nil {
		return doctor.Finding{Check: "foreign", Severity: doctor.Warn, Detail: "cannot list nftables chains: " + err.Error(), Fix: "install nftables (the nft command)"}
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return doctor.Finding{Check: "foreign", Severity: doctor.Warn, Detail: "cannot parse nft output: " + err.Error()}
	}
	var problems []string
	seen := map[string]bool{}
	for _, o := range doc.Nftables {
		raw, ok := o["chain"]
		if !ok {
			continue
		}
		var c struct {
			Family, Table, Name, Hook, Policy string
		}
		json.Unmarshal(raw, &c)
		table := c.Family + " " + c.Table
		if strings.HasPrefix(c.Table, "podnet-") {
			continue
		}
		if a.proxy != nil && !seen[table] && (c.Table == "kube-proxy" || c.Name == "KUBE-SERVICES") {
			seen[table] = true
			problems = append(problems, fmt.Sprintf("table %s belongs to kube-proxy, which must not run beside podnet's proxy", table))
		}
		if c.Hook != "" && c.Policy == "drop" && (c.Hook == "forward" || c.Hook == "input" || c.Hook == "output") {
			problems = append(problems, fmt.Sprintf("chain %s %s on hook %s drops by default: pod traffic podnet accepts may still be dropped there", table, c.Name, c.Hook))
		}
	}
	if len(problems) > 0 {
		return doctor.Finding{Check: "foreign", Severity: doctor.Error, Detail: strings.Join(problems, "; "),
			Fix: "remove kube-proxy (kubectl -n kube-system delete daemonset kube-proxy, then kube-proxy --cleanup on each node), or allow pod traffic in the other table's chain"}
	}
	return doctor.Finding{Check: "foreign", Severity: doctor.OK, Detail: "no other table conflicts with podnet's"}
}

// conntrackWarnRatio is the fill of the conntrack table that is worth a
// warning: past it, a burst of new connections starts to be dropped.
var conntrackWarnRatio = 0.9

func (a *Agent) checkConntrack() doctor.Finding {
	var count, limit int
	err := a.inNS(func() (err error) {
		if count, err = readInt("/proc/sys/net/netfilter/nf_conntrack_count"); err != nil {
			return err
		}
		limit, err = readInt("/proc/sys/net/netfilter/nf_conntrack_max")
		return err
	})
	if err != nil || limit == 0 {
		return doctor.Finding{Check: "conntrack", Severity: doctor.Warn, Detail: "cannot read the conntrack table size", Fix: "load nf_conntrack (modprobe nf_conntrack)"}
	}
	return conntrackFinding(count, limit)
}

// conntrackFinding judges the conntrack table's fill.
func conntrackFinding(count, limit int) doctor.Finding {
	detail := fmt.Sprintf("%d of %d entries in use (%.0f%%)", count, limit, 100*float64(count)/float64(limit))
	if float64(count) >= conntrackWarnRatio*float64(limit) {
		return doctor.Finding{Check: "conntrack", Severity: doctor.Warn, Detail: detail + ": nearly full; new connections will be dropped when it is",
			Fix: "raise net.netfilter.nf_conntrack_max (on the host), or find what opens so many connections (conntrack -L | sort)"}
	}
	return doctor.Finding{Check: "conntrack", Severity: doctor.OK, Detail: detail}
}

// checkCNI: podnet's conflist is the one the runtime will use (the first
// by name), and the plugin binary, when the agent installs it, is the
// agent's own.
func (a *Agent) checkCNI() doctor.Finding {
	var problems, fixes []string
	dir := a.cfg.CNIConfDir
	entries, err := os.ReadDir(dir)
	var confs []string
	if err == nil {
		for _, e := range entries {
			if n := e.Name(); strings.HasSuffix(n, ".conf") || strings.HasSuffix(n, ".conflist") || strings.HasSuffix(n, ".json") {
				confs = append(confs, n)
			}
		}
	}
	slices.Sort(confs)
	switch {
	case !slices.Contains(confs, ConflistName):
		problems = append(problems, fmt.Sprintf("%s is missing from %s", ConflistName, dir))
		fixes = append(fixes, "the agent writes it once the node has pod ranges: check Node.spec.podCIDRs and the agent's log")
	case confs[0] != ConflistName:
		problems = append(problems, fmt.Sprintf("%s sorts before %s in %s, so the runtime uses it instead of podnet's", confs[0], ConflistName, dir))
		fixes = append(fixes, "remove "+filepath.Join(dir, confs[0])+" (another plugin's leftover)")
	}
	if a.cfg.CNIBinDir != "" {
		bin := filepath.Join(a.cfg.CNIBinDir, "podnet")
		self, _ := os.Executable()
		switch same, err := sameFile(bin, self); {
		case err != nil:
			problems = append(problems, "plugin binary "+bin+": "+err.Error())
			fixes = append(fixes, "restart the agent: it installs the plugin at start")
		case !same:
			problems = append(problems, "plugin binary "+bin+" is not the agent's version")
			fixes = append(fixes, "restart the agent: it installs its own binary at start (an old plugin may mis-handle new pods)")
		}
	}
	if len(problems) > 0 {
		return doctor.Finding{Check: "cni", Severity: doctor.Error, Detail: strings.Join(problems, "; "), Fix: strings.Join(fixes, "\n")}
	}
	return doctor.Finding{Check: "cni", Severity: doctor.OK, Detail: "conflist " + filepath.Join(dir, ConflistName) + " is the runtime's first"}
}

func sameFile(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return sha256.Sum256(x) == sha256.Sum256(y), nil
}

// maxClockSkew is the clock difference worth a warning: leases and
// certificates start to misbehave around there.
const maxClockSkew = 5 * time.Second

// checkAPI measures a round trip to the API server and compares clocks: a
// dry-run Lease create comes back stamped with the server's time.
func (a *Agent) checkAPI(ctx context.Context) doctor.Finding {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t0 := time.Now()
	name := fmt.Sprintf("podnet-doctor-%s-%d", a.cfg.NodeName, t0.UnixNano())
	leases := a.cfg.Client.CoordinationV1().Leases("default")
	got, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	rtt := time.Since(t0)
	if err == nil && got.CreationTimestamp.IsZero() {
		// A client that ignores dry-run (the lab's embedded store) kept
		// it; a real server stamps the time and keeps nothing.
		leases.Delete(ctx, name, metav1.DeleteOptions{})
	}
	if err != nil {
		return doctor.Finding{Check: "api", Severity: doctor.Error, Detail: "the API server does not answer: " + err.Error(),
			Fix: "check the agent's kubeconfig or in-cluster address (KUBERNETES_SERVICE_HOST), the network path to the API server, and the agent's RBAC"}
	}
	return apiFinding(rtt, got.CreationTimestamp.Time, t0.Add(rtt/2))
}

// apiFinding judges a round trip and the server's clock against ours.
func apiFinding(rtt time.Duration, server, local time.Time) doctor.Finding {
	detail := fmt.Sprintf("API server answered in %s", rtt.Round(time.Millisecond))
	if server.IsZero() {
		return doctor.Finding{Check: "api", Severity: doctor.OK, Detail: detail + " (it reports no time; clock not compared)"}
	}
	skew := local.Sub(server)
	// The server stamps whole seconds.
	if skew < 0 {
		skew = -skew
	}
	if skew > maxClockSkew+time.Second+rtt {
		return doctor.Finding{Check: "api", Severity: doctor.Warn, Detail: fmt.Sprintf("%s; this node's clock is %s off the server's", detail, skew.Round(time.Second)),
			Fix: "synchronise the node's clock (chrony or systemd-timesyncd)"}
	}
	return doctor.Finding{Check: "api", Severity: doctor.OK, Detail: detail + "; clocks agree"}
}
