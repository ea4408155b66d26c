package model

import (
	"fmt"
	"net/netip"
	"time"
)

// Protocol is a Service port's transport protocol, in nftables' spelling.
type Protocol string

// The protocols a Service port may use.
const (
	TCP  Protocol = "tcp"
	UDP  Protocol = "udp"
	SCTP Protocol = "sctp"
)

// ServiceName names a Service.
type ServiceName struct{ Namespace, Name string }

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// ServicePort is one port of a Service.
type ServicePort struct {
	// Name is the port's name; it matches the EndpointSlice port name.
	Name     string
	Protocol Protocol
	Port     uint16
	// NodePort is 0 unless the Service is of type NodePort or LoadBalancer.
	NodePort uint16
}

// Service is what the proxy needs of a Service. Headless and ExternalName
// Services never become one: they are DNS's business.
type Service struct {
	ServiceName
	// ClusterIPs holds one address per family the Service has.
	ClusterIPs []netip.Addr
	// ExternalIPs are spec.externalIPs; LoadBalancerIPs the IPs of
	// status.loadBalancer.ingress. Both are accepted on every node and
	// follow the external traffic policy.
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	Ports           []ServicePort
	// ExternalLocal is externalTrafficPolicy: Local, InternalLocal is
	// internalTrafficPolicy: Local.
	ExternalLocal bool
	InternalLocal bool
	// Affinity is the ClientIP session affinity timeout; 0 means none.
	Affinity time.Duration
	// HealthCheckNodePort is served by the proxy when ExternalLocal is set.
	HealthCheckNodePort uint16
}

// HasExternal reports whether the Service is reachable from outside the
// cluster, and so whether its external traffic policy matters.
func (s Service) HasExternal() bool {
	if len(s.ExternalIPs)+len(s.LoadBalancerIPs) > 0 {
		return true
	}
	for _, p := range s.Ports {
		if p.NodePort != 0 {
			return true
		}
	}
	return false
}

// Endpoint is one backend of one Service port.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
	// Ready, Serving and Terminating are the EndpointSlice conditions.
	Ready, Serving, Terminating bool
	NodeName                    string
	Zone                        string
	// HintZones are the zones the EndpointSlice controller hinted this
	// endpoint for (trafficDistribution: PreferClose); nil means no hint.
	HintZones []string
}

func (e Endpoint) String() string {
	return fmt.Sprintf("%s ready=%t serving=%t terminating=%t node=%s", netip.AddrPortFrom(e.Addr, e.Port), e.Ready, e.Serving, e.Terminating, e.NodeName)
}

// PortKey names one port of one Service, as endpoints are grouped.
type PortKey struct {
	ServiceName
	Port     string
	Protocol Protocol
}

func (k PortKey) String() string {
	return fmt.Sprintf("%s:%s/%s", k.ServiceName, k.Port, k.Protocol)
}
