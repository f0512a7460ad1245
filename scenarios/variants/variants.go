// Package variants holds the data plane variants a scenario compares: the same cluster, the same
// workloads and the same load, with only the data plane between client and server changed.
package variants

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/onehop-mesh/onehop/clusters"
)

// Variant installs one data plane into a running cluster.
type Variant interface {
	Name() string
	// Describe says, for the report, what carries the traffic (proxy and version, encryption).
	Describe() string
	// Labels are put on the variant's namespace; they enroll its workloads in the variant's data
	// plane (for example istio.io/dataplane-mode). Every variant gets a namespace of its own, so
	// variants installed side by side never carry each other's traffic.
	Labels() map[string]string
	Install(ctx context.Context, c clusters.Cluster) error
	Uninstall(ctx context.Context, c clusters.Cluster) error
}

var registry = map[string]Variant{}

// Register makes a variant available to scenarios by name.
func Register(v Variant) { registry[v.Name()] = v }

// Get returns a registered variant.
func Get(name string) (Variant, error) {
	if v, ok := registry[name]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("unknown variant %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Names lists the registered variants.
func Names() []string {
	var out []string
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
