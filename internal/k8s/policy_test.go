package k8s

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/model"
)

func TestPolicyDefaultsAndPorts(t *testing.T) {
	udp := corev1.ProtocolUDP
	p80 := intstr.FromInt32(80)
	named := intstr.FromString("http")
	end := int32(90)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: networkingv1.NetworkPolicySpec{
		Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &p80, EndPort: &end}, {Protocol: &udp, Port: &named}, {Protocol: &udp}}}},
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{NamespaceSelector: &metav1.LabelSelector{}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.1/8", Except: []string{"10.1.0.0/16"}}},
		}}},
	}}
	got, err := Policy(np)
	if err != nil {
		t.Fatal(err)
	}
	// policyTypes omitted: Ingress always, Egress because there are egress rules.
	if !got.Ingress || !got.Egress {
		t.Fatalf("types: %+v", got)
	}
	want := []model.PolicyPort{{Protocol: model.TCP, Port: 80, EndPort: 90}, {Protocol: model.UDP, Named: "http"}, {Protocol: model.UDP}}
	for i, p := range got.EgressRules[0].Ports {
		if p != want[i] {
			t.Errorf("port %d: got %+v want %+v", i, p, want[i])
		}
	}
	peers := got.IngressRules[0].Peers
	if peers[0].Namespaces == nil || peers[0].Pods != nil || peers[1].Block.CIDR.String() != "10.0.0.0/8" {
		t.Fatalf("peers: %+v", peers)
	}
	// No egress rules and no types: ingress only.
	got, _ = Policy(&networkingv1.NetworkPolicy{})
	if !got.Ingress || got.Egress {
		t.Fatalf("default types: %+v", got)
	}
}

func TestPolicyBadObjectsNameTheProblem(t *testing.T) {
	sctp := corev1.Protocol("ICMP")
	bad := map[string]networkingv1.NetworkPolicySpec{
		"unknown protocol": {Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &sctp}}}}},
		"ipBlock cidr":     {Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "nope"}}}}}},
		"not inside":       {Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"11.0.0.0/16"}}}}}}},
		"unknown operator": {PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}},
		"selects nothing":  {Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{}}}}},
	}
	for want, spec := range bad {
		_, err := Policy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "bad"}, Spec: spec})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "ns/bad") {
			t.Errorf("%s: error %v", want, err)
		}
	}
}

func TestPolicyPodAndNamespace(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "b"}, Spec: corev1.PodSpec{NodeName: "n",
		Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {ContainerPort: 80}}}}},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}}
	pp, ok := PolicyPod(p)
	if !ok || len(pp.IPs) != 2 || len(pp.Ports) != 1 || pp.Ports[0] != (model.NamedPort{Name: "dns", Protocol: model.UDP, Port: 53}) {
		t.Fatalf("pod: %+v", pp)
	}
	p.Spec.HostNetwork = true
	if _, ok := PolicyPod(p); ok {
		t.Fatal("host-network pod taken")
	}
	ns := PolicyNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}})
	if ns.Labels["kubernetes.io/metadata.name"] != "x" {
		t.Fatalf("namespace labels: %v", ns.Labels)
	}
}
