package nft

import (
	"context"

	"sigs.k8s.io/knftables"
)

// Count is a named counter's value.
type Count struct{ Packets, Bytes uint64 }

// listCounters reads every named counter of a table (none when the table
// does not exist yet).
func listCounters(ctx context.Context, nft knftables.Interface, do func(func() error) error) (map[string]Count, error) {
	var cs []*knftables.Counter
	err := do(func() (err error) {
		cs, err = nft.ListCounters(ctx)
		return err
	})
	if knftables.IsNotFound(err) {
		return map[string]Count{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]Count, len(cs))
	for _, c := range cs {
		var v Count
		if c.Packets != nil {
			v.Packets = *c.Packets
		}
		if c.Bytes != nil {
			v.Bytes = *c.Bytes
		}
		out[c.Name] = v
	}
	return out, nil
}
