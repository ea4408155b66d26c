package k8s

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podnet/podnet/internal/model"
)

// ErrNotProxied marks Services the proxy ignores on purpose (headless,
// ExternalName): they are not errors, only not ours.
var ErrNotProxied = errors.New("not proxied")

// Service converts a Service object. Headless and ExternalName Services
// return ErrNotProxied. A Service with a field that does not parse is
// returned with an error naming the Service and the field, for the caller
// to log and skip.
func Service(s *corev1.Service) (model.Service, error) {
	name := model.ServiceName{Namespace: s.Namespace, Name: s.Name}
	out := model.Service{ServiceName: name}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return out, fmt.Errorf("service %s: ExternalName: %w", name, ErrNotProxied)
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		return out, fmt.Errorf("service %s: headless: %w", name, ErrNotProxied)
	}
	var err error
	if out.ClusterIPs, err = parseAddrs(ips, true); err != nil {
		return out, fmt.Errorf("service %s: clusterIPs: %w", name, err)
	}
	if out.ExternalIPs, err = parseAddrs(s.Spec.ExternalIPs, false); err != nil {
		return out, fmt.Errorf("service %s: externalIPs: %w", name, err)
	}
	if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if in.IP == "" {
				continue // a hostname: DNS's business
			}
			if in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
				continue // the load balancer proxies; traffic arrives at node ports
			}
			a, err := netip.ParseAddr(in.IP)
			if err != nil {
				return out, fmt.Errorf("service %s: status.loadBalancer.ingress ip %q: %w", name, in.IP, err)
			}
			out.LoadBalancerIPs = append(out.LoadBalancerIPs, a.Unmap())
		}
	}
	seen := map[string]bool{}
	for _, p := range s.Spec.Ports {
		proto, err := protocol(p.Protocol)
		if err != nil {
			return out, fmt.Errorf("service %s: port %q: %w", name, p.Name, err)
		}
		if p.Port < 1 || p.Port > 65535 {
			return out, fmt.Errorf("service %s: port %q: port %d out of range", name, p.Name, p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return out, fmt.Errorf("service %s: port %q: nodePort %d out of range", name, p.Name, p.NodePort)
		}
		if k := p.Name + "/" + string(proto); seen[k] {
			return out, fmt.Errorf("service %s: port %q: duplicate name", name, p.Name)
		} else {
			seen[k] = true
		}
		np := uint16(p.NodePort)
		if s.Spec.Type != corev1.ServiceTypeNodePort && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			np = 0
		}
		out.Ports = append(out.Ports, model.ServicePort{Name: p.Name, Protocol: proto, Port: uint16(p.Port), NodePort: np})
	}
	out.ExternalLocal = s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && out.HasExternal()
	out.InternalLocal = s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	if out.ExternalLocal {
		if s.Spec.HealthCheckNodePort < 0 || s.Spec.HealthCheckNodePort > 65535 {
			return out, fmt.Errorf("service %s: healthCheckNodePort %d out of range", name, s.Spec.HealthCheckNodePort)
		}
		out.HealthCheckNodePort = uint16(s.Spec.HealthCheckNodePort)
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		timeout := int32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			timeout = *c.ClientIP.TimeoutSeconds
		}
		if timeout <= 0 {
			return out, fmt.Errorf("service %s: sessionAffinity timeout %d is not positive", name, timeout)
		}
		out.Affinity = time.Duration(timeout) * time.Second
	}
	return out, nil
}

func protocol(p corev1.Protocol) (model.Protocol, error) {
	switch p {
	case corev1.ProtocolTCP, "":
		return model.TCP, nil
	case corev1.ProtocolUDP:
		return model.UDP, nil
	case corev1.ProtocolSCTP:
		return model.SCTP, nil
	}
	return "", fmt.Errorf("unknown protocol %q", p)
}

// parseAddrs parses IP strings; the first one must exist when required.
func parseAddrs(ss []string, required bool) ([]netip.Addr, error) {
	if required && len(ss) == 0 {
		return nil, errors.New("none")
	}
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// Endpoints groups the endpoints of EndpointSlices by Service port. Slices
// without a service-name label are not a Service's and are ignored. An
// address listed by two slices (as happens while the controller moves it)
// counts once, ready copies first. Unparsable addresses and ports are
// reported in errs and skipped; everything else is returned.
func Endpoints(slices []*discoveryv1.EndpointSlice) (out map[model.PortKey][]model.Endpoint, errs []error) {
	out = map[model.PortKey][]model.Endpoint{}
	seen := map[model.PortKey]map[netip.Addr]int{}
	for _, es := range slices {
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" || es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		name := model.ServiceName{Namespace: es.Namespace, Name: svc}
		for _, p := range es.Ports {
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			mp, err := protocol(proto)
			if err != nil || p.Port == nil || *p.Port < 1 || *p.Port > 65535 {
				errs = append(errs, fmt.Errorf("endpointslice %s/%s: bad port %s", es.Namespace, es.Name, portString(p)))
				continue
			}
			key := model.PortKey{ServiceName: name, Protocol: mp}
			if p.Name != nil {
				key.Port = *p.Name
			}
			if seen[key] == nil {
				seen[key] = map[netip.Addr]int{}
			}
			for _, e := range es.Endpoints {
				if len(e.Addresses) == 0 {
					continue
				}
				a, err := netip.ParseAddr(e.Addresses[0])
				if err != nil {
					errs = append(errs, fmt.Errorf("endpointslice %s/%s: address %q: %w", es.Namespace, es.Name, e.Addresses[0], err))
					continue
				}
				ep := model.Endpoint{
					Addr: a.Unmap(), Port: uint16(*p.Port),
					// A nil condition means true for ready and serving,
					// false for terminating (the API's documented defaults).
					Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
					Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
					Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
				}
				if e.NodeName != nil {
					ep.NodeName = *e.NodeName
				}
				if e.Zone != nil {
					ep.Zone = *e.Zone
				}
				if e.Hints != nil {
					ep.HintZones = []string{}
					for _, z := range e.Hints.ForZones {
						ep.HintZones = append(ep.HintZones, z.Name)
					}
				}
				if i, ok := seen[key][ep.Addr]; ok {
					if !out[key][i].Ready && ep.Ready {
						out[key][i] = ep
					}
					continue
				}
				seen[key][ep.Addr] = len(out[key])
				out[key] = append(out[key], ep)
			}
		}
	}
	for k := range out {
		eps := out[k]
		sort.Slice(eps, func(i, j int) bool { return eps[i].Addr.Less(eps[j].Addr) })
	}
	return out, errs
}

func portString(p discoveryv1.EndpointPort) string {
	s := "?"
	if p.Port != nil {
		s = fmt.Sprint(*p.Port)
	}
	if p.Protocol != nil {
		s += "/" + string(*p.Protocol)
	}
	return s
}
