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
	cfg, err := clientcmd.BuildConfigFromFlags("", a.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
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
