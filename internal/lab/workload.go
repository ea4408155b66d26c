package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/netns"
)

// workload is what runs "inside" a lab pod: one server per declared TCP or
// UDP containerPort, answering every request with the pod's namespace/name
// so a probe knows exactly who answered. The sockets are made inside the
// pod's namespace and served from this process, so a pod costs no process.
type workload struct {
	id      string // namespace/name
	closers []io.Closer
	wg      sync.WaitGroup
}

func startWorkload(nsPath string, pod *corev1.Pod) (*workload, error) {
	w := &workload{id: pod.Namespace + "/" + pod.Name}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if err := w.serve(nsPath, p); err != nil {
				w.Close()
				return nil, fmt.Errorf("pod %s: port %d/%s: %w", w.id, p.ContainerPort, p.Protocol, err)
			}
		}
	}
	return w, nil
}

func (w *workload) serve(nsPath string, p corev1.ContainerPort) error {
	addr := ":" + strconv.Itoa(int(p.ContainerPort))
	// The answer names the pod, and on a second line the source address
	// the request arrived from, so probes can check for NAT.
	reply := func(from net.Addr) []byte { return []byte(w.id + "\nsrc " + hostOf(from) + "\n") }
	switch p.Protocol {
	case corev1.ProtocolTCP, "":
		var ln net.Listener
		if err := netns.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
			return err
		}
		w.closers = append(w.closers, ln)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write(reply(c.RemoteAddr()))
				c.Close()
			}
		}()
	case corev1.ProtocolUDP:
		var pc net.PacketConn
		if err := netns.Do(nsPath, func() (err error) { pc, err = net.ListenPacket("udp", addr); return }); err != nil {
			return err
		}
		w.closers = append(w.closers, pc)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(reply(from), from)
			}
		}()
	default:
		return fmt.Errorf("protocol %s is not served by lab workloads", p.Protocol)
	}
	return nil
}

func (w *workload) Close() error {
	for _, c := range w.closers {
		c.Close()
	}
	w.wg.Wait()
	return nil
}

func hostOf(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return ap.Addr().Unmap().String()
}

// ProbeResult is one pod → target attempt. Its JSON form is a contract.
type ProbeResult struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Port      int    `json:"port"`
	Protocol  string `json:"protocol"`
	Connected bool   `json:"connected"`
	// AnsweredBy is the namespace/name of the pod that answered, and
	// Source the address the request arrived from, as the server saw it.
	AnsweredBy string `json:"answeredBy,omitempty"`
	Source     string `json:"source,omitempty"`
	// Target is the address that was tried.
	Target string `json:"target,omitempty"`
	Error  string `json:"error,omitempty"`
}

// parseAnswer splits a workload's answer into its two lines.
func parseAnswer(s string) (who, src string) {
	who, rest, _ := strings.Cut(s, "\n")
	src = strings.TrimPrefix(strings.TrimSpace(rest), "src ")
	return strings.TrimSpace(who), src
}

// dial sends one request from inside the namespace at nsPath to dst and
// returns the answer's first line.
func dial(ctx context.Context, nsPath string, proto string, dst netip.AddrPort, timeout time.Duration) (string, error) {
	return Dial(ctx, nsPath, proto, 0, dst, timeout)
}

// Dial is dial from a chosen source port (0: any). Tests use a fixed port
// to keep one UDP conntrack entry alive across endpoint changes.
func Dial(ctx context.Context, nsPath string, proto string, srcPort uint16, dst netip.AddrPort, timeout time.Duration) (string, error) {
	var answer string
	err := netns.Do(nsPath, func() error {
		switch strings.ToUpper(proto) {
		case "TCP":
			d := net.Dialer{Timeout: timeout}
			if srcPort != 0 {
				d.LocalAddr = &net.TCPAddr{Port: int(srcPort)}
			}
			c, err := d.DialContext(ctx, "tcp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(timeout))
			b, err := io.ReadAll(io.LimitReader(c, 512))
			if err != nil {
				return err
			}
			answer = string(b)
			return nil
		case "UDP":
			d := net.Dialer{}
			if srcPort != 0 {
				d.LocalAddr = &net.UDPAddr{Port: int(srcPort)}
			}
			c, err := d.DialContext(ctx, "udp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 512)
			// UDP is lossy by nature: a few short tries before giving up.
			tries := 3
			for i := 0; i < tries; i++ {
				if _, err := c.Write([]byte("probe\n")); err != nil {
					return err
				}
				c.SetReadDeadline(time.Now().Add(timeout / time.Duration(tries)))
				n, err := c.Read(buf)
				if err == nil {
					answer = string(buf[:n])
					return nil
				}
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return err
				}
			}
			return fmt.Errorf("no answer")
		}
		return fmt.Errorf("unknown protocol %q", proto)
	})
	return strings.TrimSpace(answer), err
}
