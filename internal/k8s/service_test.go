package k8s

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/model"
)

func service(mut func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80}},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

func TestServiceConversion(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	timeout := int32(30)
	s, err := Service(service(func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalIPs = []string{"203.0.113.5"}
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 30500
		s.Spec.InternalTrafficPolicy = &local
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.9"}, {Hostname: "lb.example.com"}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ClusterIPs) != 2 || s.Ports[0] != (model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080}) ||
		len(s.ExternalIPs) != 1 || len(s.LoadBalancerIPs) != 1 || !s.ExternalLocal || !s.InternalLocal ||
		s.HealthCheckNodePort != 30500 || s.Affinity != 30*time.Second {
		t.Errorf("converted: %+v", s)
	}
}

func TestServiceNotProxiedAndBad(t *testing.T) {
	for name, tc := range map[string]struct {
		mut  func(*corev1.Service)
		want string // "" for ErrNotProxied
	}{
		"headless":        {func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }, ""},
		"externalname":    {func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }, ""},
		"bad cluster ip":  {func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.300"} }, "service ns/web: clusterIPs"},
		"bad external ip": {func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"nope"} }, "externalIPs"},
		"bad protocol":    {func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }, `unknown protocol "ICMP"`},
		"bad port":        {func(s *corev1.Service) { s.Spec.Ports[0].Port = 70000 }, "out of range"},
		"duplicate port": {func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "http", Port: 81})
		}, "duplicate"},
	} {
		_, err := Service(service(tc.mut))
		switch {
		case err == nil:
			t.Errorf("%s: no error", name)
		case tc.want == "" && !errors.Is(err, ErrNotProxied):
			t.Errorf("%s: %v, want ErrNotProxied", name, err)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func TestEndpointsDedupAndConditions(t *testing.T) {
	yes, no := true, false
	port, name := int32(8080), "http"
	slice := func(n string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: n, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			Endpoints:  eps, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		}
	}
	got, errs := Endpoints([]*discoveryv1.EndpointSlice{
		slice("a", discoveryv1.Endpoint{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
			discoveryv1.Endpoint{Addresses: []string{"bogus"}}),
		// The same address, ready, in a second slice wins.
		slice("b", discoveryv1.Endpoint{Addresses: []string{"10.0.0.2"}}, discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"}}),
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "orphan"}},
	})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `"bogus"`) {
		t.Errorf("errors: %v", errs)
	}
	eps := got[model.PortKey{ServiceName: model.ServiceName{Namespace: "ns", Name: "web"}, Port: "http", Protocol: model.TCP}]
	if len(eps) != 2 || eps[0].Addr.String() != "10.0.0.1" || !eps[1].Ready || eps[1].Terminating {
		t.Errorf("endpoints: %v", eps)
	}
}
