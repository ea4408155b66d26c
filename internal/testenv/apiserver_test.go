package testenv

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestAPIServerRestartKeepsData starts a real kube-apiserver, stores a
// Node with pod CIDRs, restarts the server and reads the Node back.
func TestAPIServerRestartKeepsData(t *testing.T) {
	a := StartAPIServer(t, WithDualStack())
	cs := clientOf(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if v, err := cs.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("server %s at %s", v.GitVersion, a.URL)
	}

	cidrs := []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Spec:       corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	check := func(when string) {
		t.Helper()
		got, err := cs.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: get node: %v", when, err)
		}
		if !slices.Equal(got.Spec.PodCIDRs, cidrs) || got.Spec.PodCIDR != cidrs[0] {
			t.Fatalf("%s: podCIDR %q podCIDRs %q, want %q", when, got.Spec.PodCIDR, got.Spec.PodCIDRs, cidrs)
		}
	}
	check("before restart")

	// The dual-stack service range allocates a ClusterIP of each family.
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr(corev1.IPFamilyPolicyRequireDualStack),
			Ports:          []corev1.ServicePort{{Port: 80}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create dual-stack service: %v", err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("service ClusterIPs %q, want one per family", svc.Spec.ClusterIPs)
	}

	start := time.Now()
	a.Restart(t)
	t.Logf("restart took %v", time.Since(start).Round(time.Millisecond))
	check("after restart")
}

func ptr[T any](v T) *T { return &v }

// TestAPIServerStateDir stops a server whose state lives in a given
// directory, starts a new one (new ports) on that directory, and finds
// the first one's Service there.
func TestAPIServerStateDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := StartAPIServer(t, WithStateDir(dir))
	svc, err := clientOf(t, first).CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kept"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first.Stop()
	second := StartAPIServer(t, WithStateDir(dir))
	if second.URL == first.URL {
		t.Logf("same port twice by chance: %s", second.URL)
	}
	got, err := clientOf(t, second).CoreV1().Services("default").Get(ctx, "kept", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("second server: %v", err)
	}
	if got.Spec.ClusterIP != svc.Spec.ClusterIP {
		t.Fatalf("ClusterIP %s, want %s", got.Spec.ClusterIP, svc.Spec.ClusterIP)
	}
}

// clientOf is a client of the server, through its kubeconfig.
func clientOf(t *testing.T, a *APIServer) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", a.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
