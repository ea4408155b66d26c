package model

import (
	"net/netip"
)

// SelectorOp is a label selector requirement's operator.
type SelectorOp string

// The operators of matchExpressions.
const (
	OpIn           SelectorOp = "In"
	OpNotIn        SelectorOp = "NotIn"
	OpExists       SelectorOp = "Exists"
	OpDoesNotExist SelectorOp = "DoesNotExist"
)

// SelectorExpr is one matchExpressions requirement.
type SelectorExpr struct {
	Key    string
	Op     SelectorOp
	Values []string
}

// Selector is a label selector. The zero value (and an empty one) selects
// everything; "absent" is expressed by a nil *Selector where the API makes
// the difference.
type Selector struct {
	Labels map[string]string
	Exprs  []SelectorExpr
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for k, v := range s.Labels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range s.Exprs {
		v, ok := labels[e.Key]
		switch e.Op {
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		case OpIn:
			if !ok || !contains(e.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && contains(e.Values, v) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// PolicyPort is one entry of a rule's ports. Port 0 with no Name means
// every port of Protocol; EndPort, when set, makes Port..EndPort a range.
type PolicyPort struct {
	Protocol Protocol
	Port     uint16
	EndPort  uint16
	// Named is a named port, resolved against the target pod's
	// containerPorts (ingress: the selected pod; egress: the peer).
	Named string
}

// IPBlock is an ipBlock peer: CIDR minus the Except ranges.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// PolicyPeer is one entry of a rule's from/to. Exactly one of Block and
// (Pods, Namespaces) is set. Pods nil with Namespaces set selects every pod
// of the selected namespaces; Namespaces nil with Pods set selects pods of
// the policy's own namespace.
type PolicyPeer struct {
	Pods       *Selector
	Namespaces *Selector
	Block      *IPBlock
}

// PolicyRule is one ingress or egress rule. Nil Peers means every peer
// (from/to omitted or empty); nil Ports means every port and protocol.
type PolicyRule struct {
	Peers []PolicyPeer
	Ports []PolicyPort
}

// PolicyName names a NetworkPolicy.
type PolicyName struct{ Namespace, Name string }

func (n PolicyName) String() string { return n.Namespace + "/" + n.Name }

// Policy is a NetworkPolicy, with policyTypes already defaulted: Ingress
// and Egress say which directions it isolates the selected pods in.
type Policy struct {
	PolicyName
	Pods    Selector
	Ingress bool
	Egress  bool
	// IngressRules and EgressRules are the allow rules; an isolating
	// direction with no rules allows nothing.
	IngressRules []PolicyRule
	EgressRules  []PolicyRule
}

// NamedPort is a container port with a name.
type NamedPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// PolicyPod is what policy needs of a pod.
type PolicyPod struct {
	Namespace, Name string
	Node            string
	Labels          map[string]string
	IPs             []netip.Addr
	Ports           []NamedPort
}

// Key is the pod's "namespace/name".
func (p PolicyPod) Key() string { return p.Namespace + "/" + p.Name }

// Resolve finds a named port of the pod.
func (p PolicyPod) Resolve(name string, proto Protocol) (uint16, bool) {
	for _, np := range p.Ports {
		if np.Name == name && np.Protocol == proto {
			return np.Port, true
		}
	}
	return 0, false
}

// PolicyNamespace is a namespace's name and labels.
type PolicyNamespace struct {
	Name   string
	Labels map[string]string
}
