package lab

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func pod(name string, labels map[string]string, ip string, ready bool, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	return p
}

// TestDesiredSlicesNamedPorts: a named targetPort resolves per pod, so
// pods that number it differently land in different slices; pods that do
// not match the selector, or lack the address family, are left out.
func TestDesiredSlicesNamedPorts(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"},
		Spec: corev1.ServiceSpec{
			Selector:   map[string]string{"app": "web"},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	web := map[string]string{"app": "web"}
	pods := []*corev1.Pod{
		pod("a", web, "10.0.0.1", true, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
		pod("b", web, "10.0.0.2", false, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
		pod("c", web, "10.0.0.3", true, corev1.ContainerPort{Name: "http", ContainerPort: 9090}),
		pod("d", map[string]string{"app": "db"}, "10.0.0.4", true),
		pod("e", web, "fd00::5", true, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
	}
	slices := DesiredSlices(svc, pods, nil)
	if len(slices) != 2 {
		t.Fatalf("want 2 slices (8080 and 9090), got %d", len(slices))
	}
	got := map[int32][]string{}
	for _, s := range slices {
		for _, e := range s.Endpoints {
			got[*s.Ports[0].Port] = append(got[*s.Ports[0].Port], fmt.Sprintf("%s ready=%v", e.Addresses[0], *e.Conditions.Ready))
		}
	}
	if fmt.Sprint(got[8080]) != "[10.0.0.1 ready=true 10.0.0.2 ready=false]" || fmt.Sprint(got[9090]) != "[10.0.0.3 ready=true]" {
		t.Fatalf("endpoints by port: %v", got)
	}
	ext := svc.DeepCopy()
	ext.Spec.Type = corev1.ServiceTypeExternalName
	if s := DesiredSlices(ext, pods, nil); len(s) != 0 {
		t.Fatalf("ExternalName got slices: %v", s)
	}
}
