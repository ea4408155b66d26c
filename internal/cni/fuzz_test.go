package cni

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig feeds arbitrary bytes to the config parser: it must
// never panic, every rejection must be a CNI error with code 6 or 7, and
// every accepted config must be usable (named, ranges valid, MTU sane).
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["10.244.1.0/24","fd00::/64"],"mtu":1450,"dataDir":"/var/lib/cni/podnet"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"podnet","podCIDRs":[]}`,
		`{"cniVersion":"1.1.0","name":"n","type":"podnet","podCIDRs":["10.0.0.0/31"]}`,
		`{"cniVersion":"1.1.0","name":"n","type":"podnet","prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/32"}]}}`,
		`{"name":"n","podCIDRs":"10.0.0.0/8"}`,
		`{`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) || (ce.Code != types.ErrDecodingFailure && ce.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("rejection is not a code 6/7 CNI error: %#v", err)
			}
			return
		}
		if c.Name == "" || c.MTU < 1280 || c.DataDir == "" {
			t.Fatalf("accepted an unusable config: %+v", c)
		}
		if len(c.Ranges()) > 2 {
			t.Fatalf("accepted %d ranges", len(c.Ranges()))
		}
		for _, r := range c.Ranges() {
			if r != r.Masked() {
				t.Fatalf("accepted unmasked range %s", r)
			}
		}
	})
}

// FuzzParseArgs: CNI_ARGS parsing never panics, and rejections carry
// code 4.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
		"", ";;", "novalue", "=x", "K8S_POD_NAME=a=b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, err := ParseArgs(s)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("rejection is not a code 4 CNI error: %#v", err)
			}
		}
	})
}

func TestParseArgs(t *testing.T) {
	p, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1")
	if err != nil || p.String() != "demo/web-1" {
		t.Fatalf("got %v %v", p, err)
	}
	if _, err := ParseArgs("K8S_POD_NAME"); err == nil {
		t.Fatal("want an error for a pair without '='")
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["fd00::/64","10.1.0.0/24"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MTU != DefaultMTU || c.DataDir != DefaultDataDir || c.Ranges()[0].String() != "10.1.0.0/24" {
		t.Fatalf("defaults/order wrong: mtu=%d dataDir=%s ranges=%v", c.MTU, c.DataDir, c.Ranges())
	}
}
