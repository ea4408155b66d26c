package routing

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// The VXLAN overlay, in the style flannel's vxlan backend made standard:
// one route, one neighbour entry and one FDB entry per peer, all static.
//
//   - Each node has one VXLAN device per underlay family in use: pnvx4
//     carries peers reached over IPv4, pnvx6 peers reached over IPv6. Both
//     carry inner IPv4 and IPv6 alike.
//   - A node's VTEP address for each of its pod ranges is the range's
//     second address (10.244.3.1 for 10.244.3.0/24): IPAM never gives it to
//     a pod. It sits on the device as a /32 (/128).
//   - A device's MAC is derived from the node's underlay address of that
//     family (0e:70:<IPv4> or 0e:76:<last 4 bytes of IPv6>), so every node
//     computes every peer's MAC from the Node object alone: no annotations,
//     no handshakes.
//   - For a peer range 10.244.3.0/24 the node installs: a route
//     "10.244.3.0/24 via 10.244.3.1 dev pnvx4 onlink", a permanent
//     neighbour "10.244.3.1 lladdr <peer MAC> dev pnvx4", and a permanent
//     FDB entry "<peer MAC> dst <peer underlay IP> dev pnvx4". Learning is
//     off and nothing floods: an unknown destination is simply unroutable,
//     and no L2 or L3 miss events are needed.

// VXLANConfig configures the overlay.
type VXLANConfig struct {
	VNI  uint32
	Port uint16
	// UplinkMTU is the MTU of the device that carries the node's underlay
	// address; the overlay device's MTU is this less the encapsulation.
	UplinkMTU int
}

// DefaultVXLAN is the Linux VXLAN convention flannel also uses.
var DefaultVXLAN = VXLANConfig{VNI: 1, Port: 8472, UplinkMTU: 1500}

// Encapsulation overhead: outer Ethernet 14 + outer IP (20 or 40) + UDP 8
// + VXLAN 8. The inner frame's Ethernet header is counted by the MTU of
// the overlay device itself, so 50 over IPv4 and 70 over IPv6.
const (
	Overhead4 = 50
	Overhead6 = 70
)

// DevicePrefix starts the name of every VXLAN device podnet owns.
const DevicePrefix = "pnvx"

// Device is one desired VXLAN device.
type Device struct {
	Name  string
	VNI   uint32
	Port  uint16
	Local netip.Addr // underlay source address
	MAC   net.HardwareAddr
	MTU   int
	Addrs []netip.Prefix // VTEP addresses
}

func (d Device) String() string {
	var a []string
	for _, p := range d.Addrs {
		a = append(a, p.String())
	}
	return fmt.Sprintf("%s vni %d port %d local %s mac %s mtu %d addrs %s", d.Name, d.VNI, d.Port, d.Local, d.MAC, d.MTU, strings.Join(a, ","))
}

// Neighbour is a permanent neighbour entry on an overlay device.
type Neighbour struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

func (n Neighbour) String() string { return fmt.Sprintf("%s lladdr %s dev %s", n.IP, n.MAC, n.Dev) }

// FDBEntry is a permanent forwarding-database entry on an overlay device.
type FDBEntry struct {
	Dev string
	MAC net.HardwareAddr
	Dst netip.Addr
}

func (f FDBEntry) String() string { return fmt.Sprintf("%s dst %s dev %s", f.MAC, f.Dst, f.Dev) }

// DeviceName is the overlay device for an underlay family.
func DeviceName(underlay4 bool) string {
	if underlay4 {
		return DevicePrefix + "4"
	}
	return DevicePrefix + "6"
}

// VTEPAddr is the VTEP address of a pod range: its second address.
func VTEPAddr(r netip.Prefix) netip.Addr { return r.Masked().Addr().Next() }

// VTEPMAC derives a node's device MAC from its underlay address.
func VTEPMAC(underlay netip.Addr) net.HardwareAddr {
	b := underlay.AsSlice()
	kind := byte(0x70)
	if underlay.Is6() {
		kind = 0x76
	}
	return net.HardwareAddr{0x0e, kind, b[len(b)-4], b[len(b)-3], b[len(b)-2], b[len(b)-1]}
}

// overlay accumulates the overlay part of a node's state.
type overlay struct {
	me      model.Node
	cfg     VXLANConfig
	devices map[bool]bool // underlay family (is4) → needed
	neigh   []Neighbour
	fdb     map[string]FDBEntry
}

func newOverlay(me model.Node, cfg VXLANConfig) *overlay {
	if cfg.VNI == 0 {
		cfg.VNI = DefaultVXLAN.VNI
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultVXLAN.Port
	}
	if cfg.UplinkMTU == 0 {
		cfg.UplinkMTU = DefaultVXLAN.UplinkMTU
	}
	return &overlay{me: me, cfg: cfg, devices: map[bool]bool{}, fdb: map[string]FDBEntry{}}
}

// underlay picks the underlay family for reaching peer's range c: the
// range's own family when both nodes have an address of it, else the
// other family.
func (o *overlay) underlay(peer model.Node, c netip.Prefix) (bool, error) {
	for _, is4 := range []bool{c.Addr().Is4(), !c.Addr().Is4()} {
		_, a := o.me.Addr(is4)
		_, b := peer.Addr(is4)
		if a && b {
			return is4, nil
		}
	}
	return false, fmt.Errorf("no underlay address family in common")
}

func (o *overlay) peer(peer model.Node, c netip.Prefix) (Route, error) {
	is4, err := o.underlay(peer, c)
	if err != nil {
		return Route{}, err
	}
	dev := DeviceName(is4)
	peerAddr, _ := peer.Addr(is4)
	mac := VTEPMAC(peerAddr)
	vtep := VTEPAddr(c)
	o.devices[is4] = true
	o.neigh = append(o.neigh, Neighbour{Dev: dev, IP: vtep, MAC: mac})
	o.fdb[dev+mac.String()] = FDBEntry{Dev: dev, MAC: mac, Dst: peerAddr}
	return Route{Dst: c, Via: vtep, Dev: dev, OnLink: true, Peer: peer.Name}, nil
}

// finish adds devices, and the neighbours and FDB entries of the routes
// that survived, to st.
func (o *overlay) finish(st *State) {
	for _, is4 := range []bool{true, false} {
		if !o.devices[is4] {
			continue
		}
		local, _ := o.me.Addr(is4)
		d := Device{
			Name: DeviceName(is4), VNI: o.cfg.VNI, Port: o.cfg.Port, Local: local,
			MAC: VTEPMAC(local), MTU: o.cfg.UplinkMTU - overhead(is4),
		}
		for _, c := range o.me.PodCIDRs {
			a := VTEPAddr(c)
			d.Addrs = append(d.Addrs, netip.PrefixFrom(a, a.BitLen()))
		}
		st.Devices = append(st.Devices, d)
	}
	vias := map[string]bool{}
	for _, r := range st.Routes {
		if r.Dev != "" {
			vias[r.Dev+r.Via.String()] = true
		}
	}
	for _, n := range o.neigh {
		if vias[n.Dev+n.IP.String()] {
			st.Neighbours = append(st.Neighbours, n)
		}
	}
	used := map[string]bool{}
	for _, n := range st.Neighbours {
		used[n.Dev+n.MAC.String()] = true
	}
	for k, f := range o.fdb {
		if used[k] {
			st.FDB = append(st.FDB, f)
		}
	}
	sort.Slice(st.Neighbours, func(i, j int) bool { return st.Neighbours[i].String() < st.Neighbours[j].String() })
	sort.Slice(st.FDB, func(i, j int) bool { return st.FDB[i].String() < st.FDB[j].String() })
}

func overhead(underlay4 bool) int {
	if underlay4 {
		return Overhead4
	}
	return Overhead6
}

// PodMTU is the MTU pods get: the uplink's, less the largest overhead any
// overlay device in st adds. Pods may talk to any peer, so they get the
// smallest MTU of any path.
func PodMTU(uplinkMTU int, mode Mode, underlay4, underlay6 bool) int {
	if mode == ModeDirect {
		return uplinkMTU
	}
	if underlay6 {
		return uplinkMTU - Overhead6
	}
	return uplinkMTU - Overhead4
}
