package variants

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

// testProvider returns the onehop binary, a lab provider using it and a unique lab name starting
// with prefix; the lab is removed when the test ends, whatever happens.
func testProvider(t *testing.T, prefix string) (string, *netns.Provider, string) {
	t.Helper()
	testbin.RequireRoot(t)
	bin := testbin.Onehop(t)
	p, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	p.Binary = bin
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("%s%x", prefix, b)
	t.Cleanup(func() { p.Down(context.Background(), name) })
	return bin, p, name
}

// upAndInstall brings the lab up and installs v, returning Install's error; v is uninstalled
// (and that checked) when the test ends.
func upAndInstall(t *testing.T, p *netns.Provider, spec clusters.Spec, v Variant) (*netns.Cluster, error) {
	t.Helper()
	c, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	err = v.Install(context.Background(), c)
	t.Cleanup(func() {
		if err := v.Uninstall(context.Background(), c); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	return c.(*netns.Cluster), err
}
