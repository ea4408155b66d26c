// Package nflog reads packets that nftables rules send to an nflog group
// (`log group N`), over nfnetlink_log. podnet uses it to explain policy
// drops: the kernel copies only the first bytes of each dropped packet,
// and only while a reader is bound, so nobody pays when nobody looks.
package nflog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/mdlayher/netlink"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h).
const (
	netlinkNetfilter = 12
	subsysULOG       = 4
	msgPacket        = 0
	msgConfig        = 1

	cfgCmd     = 1
	cfgMode    = 2
	cfgTimeout = 3
	cfgQThresh = 4

	cmdBind   = 1
	cmdUnbind = 2

	copyPacket = 2

	attrPayload = 9
	attrPrefix  = 10
	attrInDev   = 4
	attrOutDev  = 5
)

// Packet is one logged packet.
type Packet struct {
	Prefix         string
	InDev, OutDev  uint32
	Payload        []byte
	Src, Dst       netip.Addr
	Proto          uint8
	SPort, DPort   uint16
	HasTransport   bool
	ParsedIPHeader bool
}

// Conn is bound to one nflog group in one network namespace.
type Conn struct {
	c     *netlink.Conn
	group uint16
}

// Open binds to group in the namespace at nsPath ("" for the current
// one), asking for the first copyRange bytes of each packet.
func Open(nsPath string, group uint16, copyRange uint32) (*Conn, error) {
	cfg := &netlink.Config{}
	if nsPath != "" {
		f, err := os.Open(nsPath)
		if err != nil {
			return nil, fmt.Errorf("nflog: %w", err)
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(netlinkNetfilter, cfg)
	if err != nil {
		return nil, fmt.Errorf("nflog: dial: %w", err)
	}
	conn := &Conn{c: c, group: group}
	if err := conn.config(encodeCmd(cmdBind)); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: bind group %d: %w", group, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, copyRange)
	mode[4] = copyPacket
	if err := conn.config(encodeAttr(cfgMode, mode)); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: set copy mode: %w", err)
	}
	// The kernel holds reports until 100 are queued or a second passes;
	// people watching flows want them sooner: at most 50 ms late, in
	// batches of up to 32.
	u32 := func(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }
	if err := conn.config(encodeAttr(cfgTimeout, u32(5))); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: set flush timeout: %w", err)
	}
	if err := conn.config(encodeAttr(cfgQThresh, u32(32))); err != nil {
		c.Close()
		return nil, fmt.Errorf("nflog: set queue threshold: %w", err)
	}
	// Drops can come in bursts; a larger buffer loses fewer reports.
	_ = c.SetReadBuffer(4 << 20)
	return conn, nil
}

func encodeCmd(cmd uint8) []byte { return encodeAttr(cfgCmd, []byte{cmd}) }

func encodeAttr(typ uint16, data []byte) []byte {
	b, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: typ, Data: data}})
	return b
}

func (c *Conn) config(attrs []byte) error {
	hdr := []byte{0 /* AF_UNSPEC */, 0 /* version */, 0, 0}
	binary.BigEndian.PutUint16(hdr[2:], c.group)
	_, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysULOG<<8 | msgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(hdr, attrs...),
	})
	return err
}

// Close unbinds and closes; a blocked Read returns.
func (c *Conn) Close() error {
	_ = c.config(encodeCmd(cmdUnbind))
	return c.c.Close()
}

// Read blocks for the next batch of packets.
func (c *Conn) Read() ([]Packet, error) {
	msgs, err := c.c.Receive()
	if err != nil {
		return nil, err
	}
	var out []Packet
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(subsysULOG<<8|msgPacket) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			continue
		}
		ad.ByteOrder = binary.BigEndian
		var p Packet
		for ad.Next() {
			switch ad.Type() {
			case attrPrefix:
				p.Prefix = strings.TrimRight(ad.String(), "\x00")
			case attrPayload:
				p.Payload = ad.Bytes()
			case attrInDev:
				p.InDev = ad.Uint32()
			case attrOutDev:
				p.OutDev = ad.Uint32()
			}
		}
		p.parse()
		out = append(out, p)
	}
	return out, nil
}

// parse reads addresses, protocol and ports from the IP header.
func (p *Packet) parse() {
	b := p.Payload
	if len(b) < 1 {
		return
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return
		}
		ihl := int(b[0]&0x0f) * 4
		p.Src, _ = netip.AddrFromSlice(b[12:16])
		p.Dst, _ = netip.AddrFromSlice(b[16:20])
		p.Proto = b[9]
		// Only the first fragment carries ports.
		if binary.BigEndian.Uint16(b[6:8])&0x1fff == 0 && len(b) >= ihl {
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return
		}
		p.Src, _ = netip.AddrFromSlice(b[8:24])
		p.Dst, _ = netip.AddrFromSlice(b[24:40])
		p.Proto = b[6] // extension headers are not followed
		l4 = b[40:]
	default:
		return
	}
	p.ParsedIPHeader = true
	switch p.Proto {
	case 6, 17, 132:
		if len(l4) >= 4 {
			p.SPort = binary.BigEndian.Uint16(l4[0:2])
			p.DPort = binary.BigEndian.Uint16(l4[2:4])
			p.HasTransport = true
		}
	}
}

// ProtoName spells an IP protocol number as policy does.
func ProtoName(n uint8) string {
	switch n {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return fmt.Sprint(n)
}
