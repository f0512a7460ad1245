// Package variants holds the data plane variants a scenario compares: the same cluster, the same
// workloads and the same load, with only the data plane between client and server changed.
package variants

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"syscall"

	"github.com/onehop-mesh/onehop/bench"
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

// Restarter is a variant whose node daemon can be restarted the way an operator would, for the
// restart-mid-traffic scenario.
type Restarter interface {
	// Restart stops the variant's daemon on node with sig (SIGTERM: graceful, SIGKILL: crash),
	// starts it again and waits until it is ready.
	Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error)
}

// Onboarder is a variant that acts when a pod joins or leaves one of its namespaces: injects a
// sidecar, enrolls the pod in the agent, captures its traffic. Install does this for the pods
// that exist then; the start-up scenario adds pods later.
type Onboarder interface {
	AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error
	RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error
}

// MetricsSource is a variant whose node agents serve Prometheus metrics, with connection
// telemetry for the pods enrolled with it.
type MetricsSource interface {
	// MetricsTargets are the agents' metrics addresses (host:port), reachable from any node.
	MetricsTargets(c clusters.Cluster) []string
	// TelemetryOn says whether the variant's pods are enrolled with connection telemetry.
	TelemetryOn() bool
}

// RestartEvent is one restart as the scenario records it.
type RestartEvent = bench.RestartEvent

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
