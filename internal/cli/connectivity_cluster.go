package cli

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/podnet/podnet/internal/lab"
)

// DefaultProbeImage is the upstream e2e suite's test image: its netexec
// serves HTTP and its connect tries one TCP connection.
const DefaultProbeImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"

// clusterConnectivity deploys probe pods into a cluster (agnhost netexec
// servers, clients, a host-network pod, a NodePort Service and a
// NetworkPolicy, in a namespace of their own), tries every path by running
// `agnhost connect` inside the pods, and deletes the namespace. Latencies
// include the exec round trip through the apiserver.
func clusterConnectivity(ctx context.Context, kubeconfig, image, outside string) ([]lab.PathCheck, error) {
	rc, err := kubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var ready []corev1.Node
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !n.Spec.Unschedulable {
				ready = append(ready, n)
			}
		}
	}
	if len(ready) < 2 {
		return nil, fmt.Errorf("the connectivity test needs 2 ready nodes, the cluster has %d", len(ready))
	}
	n1, n2 := ready[0], ready[1]
	ns := fmt.Sprintf("podnet-connectivity-%05d", rand.Intn(100000))
	pods := client.CoreV1().Pods(ns)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		zero := int64(0)
		client.CoreV1().Namespaces().Delete(cctx, ns, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}()
	server := func(name, node string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.PodSpec{
			NodeName: node, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "agnhost", Image: image, Args: []string{"netexec", "--http-port=8080", "--udp-port=-1"},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	}
	hostnet := server("node", n1.Name, nil)
	hostnet.Spec.HostNetwork = true
	hostnet.Spec.Containers[0].Args = []string{"pause"}
	hostnet.Spec.Containers[0].Ports = nil
	for _, p := range []*corev1.Pod{
		server("client", n1.Name, map[string]string{"role": "client"}),
		server("intruder", n1.Name, map[string]string{"role": "intruder"}),
		server("echo-same", n1.Name, map[string]string{"app": "echo-same"}),
		server("echo-other", n2.Name, map[string]string{"app": "echo"}),
		server("guarded", n2.Name, map[string]string{"app": "guarded"}),
		hostnet,
	} {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("deploy probe pod %s: %w", p.Name, err)
		}
	}
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"},
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}}}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	ips := map[string]string{}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		list, err := pods.List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				running++
				ips[p.Name] = p.Status.PodIP
			}
		}
		if running == len(list.Items) && running == 6 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("probe pods not running after 3 minutes (%d of 6)", running)
		}
		time.Sleep(time.Second)
	}
	// Let the Service's endpoints and the policy reach the nodes.
	time.Sleep(3 * time.Second)
	nodeIP := func(n corev1.Node) string {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				return a.Address
			}
		}
		return ""
	}
	hp := func(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
	nodePort := int(svc.Spec.Ports[0].NodePort)
	type attempt struct {
		path, from, to, dst, expect string
	}
	attempts := []attempt{
		{"pod to pod, same node", "client", "echo-same", hp(ips["echo-same"], 8080), "allow"},
		{"pod to pod, across nodes", "client", "echo-other", hp(ips["echo-other"], 8080), "allow"},
		{"pod to Service (ClusterIP)", "client", "svc/echo", hp(svc.Spec.ClusterIP, 80), "allow"},
		{"pod to Service (NodePort)", "client", fmt.Sprintf("%s:%d", n2.Name, nodePort), hp(nodeIP(n2), nodePort), "allow"},
		{"node to pod", "node", "echo-other", hp(ips["echo-other"], 8080), "allow"},
		{"policy: allowed client", "client", "guarded", hp(ips["guarded"], 8080), "allow"},
		{"policy: denied intruder", "intruder", "guarded", hp(ips["guarded"], 8080), "deny"},
	}
	if outside != "" {
		attempts = append(attempts, attempt{"pod to outside", "client", outside, outside, "allow"})
	}
	var out []lab.PathCheck
	for _, a := range attempts {
		t0 := time.Now()
		stdout, err := podExec(ctx, rc, client, ns, a.from, []string{"/agnhost", "connect", a.dst, "--timeout=2s"})
		c := lab.PathCheck{Path: a.path, From: a.from, To: a.to, Expect: a.expect, Latency: time.Since(t0)}
		if err == nil {
			c.Pass, c.Detail = a.expect == "allow", "connected to "+a.dst
		} else {
			c.Pass, c.Detail = a.expect == "deny", strings.TrimSpace(stdout+" "+err.Error())
		}
		out = append(out, c)
	}
	// Outside to NodePort: from this machine, if it can reach the node.
	t0 := time.Now()
	conn, err := net.DialTimeout("tcp", hp(nodeIP(n1), nodePort), 2*time.Second)
	c := lab.PathCheck{Path: "outside to Service (NodePort)", From: "this machine", To: fmt.Sprintf("%s:%d", n1.Name, nodePort), Expect: "allow", Latency: time.Since(t0)}
	if err == nil {
		conn.Close()
		c.Pass, c.Detail = true, "connected"
	} else {
		c.Detail = err.Error() + " (is this machine outside the nodes' network?)"
	}
	out = append(out, c)
	if outside == "" {
		out = append(out, lab.PathCheck{Path: "pod to outside", From: "client", Expect: "allow", Pass: true, Skipped: true, Detail: "skipped: give --outside HOST:PORT, an address outside the cluster the pods should reach"})
	}
	if _, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil && len(svc.Status.LoadBalancer.Ingress) == 0 {
		out = append(out, lab.PathCheck{Path: "outside to Service (LoadBalancer)", From: "outside", To: "svc/echo", Expect: "allow", Pass: true, Skipped: true,
			Detail: "skipped: the test uses a NodePort Service, which every cluster has; a load balancer sends to the same node ports"})
	}
	return out, nil
}

// podExec runs a command in a pod's first container and returns its output.
func podExec(ctx context.Context, rc *rest.Config, client kubernetes.Interface, ns, pod string, cmd []string) (string, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	exec, err := remotecommand.NewSPDYExecutor(rc, "POST", req.URL())
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	return out.String(), err
}
