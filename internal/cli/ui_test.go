package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/testenv"
	"github.com/podnet/podnet/internal/ui"
)

// TestClusterUISource reads a real kube-apiserver the way `podnet ui`
// does and serves it: nodes, pods (host-network ones left out), Services
// with their endpoints.
func TestClusterUISource(t *testing.T) {
	api := testenv.StartAPIServer(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}}}, metav1.CreateOptions{}))
	must(c.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	for _, p := range []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"app": "web"}}, Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "hostnet"}, Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true, Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
	} {
		must(c.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}))
	}
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	port := int32(8080)
	must(c.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
		Ports: []discoveryv1.EndpointPort{{Port: &port}}}, metav1.CreateOptions{}))

	srv := httptest.NewServer(ui.Handler(&clusterUISource{client: c}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var st ui.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var pods []string
	for _, p := range st.Pods {
		pods = append(pods, p.Name)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].PodCIDRs[0] != "10.244.1.0/24" || strings.Join(pods, ",") != "default/web" {
		t.Errorf("state: nodes %+v pods %v", st.Nodes, pods)
	}
	found := false
	for _, s := range st.Services {
		if s.Name == "default/web" {
			found = s.ClusterIP == svc.Spec.ClusterIP && len(s.Endpoints) == 1 && s.Endpoints[0] == "10.244.1.5:8080"
		}
	}
	if !found {
		t.Errorf("services: %+v", st.Services)
	}
	resp, err = srv.Client().Get(srv.URL + "/api/flows")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("flows without agents: %s", b)
	}
}
