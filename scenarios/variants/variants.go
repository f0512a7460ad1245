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

// Variant is one data plane a scenario compares, as the report names and describes it. How it
// is installed depends on the cluster: an Installer per provider and variant (RegisterInstaller)
// puts it on a cluster and returns the Deployment, which is all the runner keeps.
type Variant interface {
	Name() string
	// Describe says, for the report, what carries the traffic (proxy and version, encryption).
	Describe() string
	// Labels are put on the variant's namespace; they enroll its workloads in the variant's data
	// plane (for example istio.io/dataplane-mode). Every variant gets a namespace of its own, so
	// variants installed side by side never carry each other's traffic.
	Labels() map[string]string
}

// Installer installs one variant on the clusters of one provider.
type Installer interface {
	Install(ctx context.Context, c clusters.Cluster) (Deployment, error)
}

// Deployment is a variant installed on one cluster. What more it can do is in the interfaces it
// implements: Restarter, Onboarder, MetricsSource.
type Deployment interface {
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

var (
	registry   = map[string]Variant{}
	installers = map[string]map[string]Installer{} // provider -> variant -> installer
)

// Register makes a variant available to scenarios by name.
func Register(v Variant) { registry[v.Name()] = v }

// RegisterInstaller says how variant is installed on provider's clusters.
func RegisterInstaller(provider, variant string, in Installer) {
	if installers[provider] == nil {
		installers[provider] = map[string]Installer{}
	}
	installers[provider][variant] = in
}

// Get returns a registered variant.
func Get(name string) (Variant, error) {
	if v, ok := registry[name]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("unknown variant %q (known: %s)", name, strings.Join(Names(), ", "))
}

// InstallerFor returns how variant is installed on provider's clusters.
func InstallerFor(provider, variant string) (Installer, error) {
	if _, err := Get(variant); err != nil {
		return nil, err
	}
	in, ok := installers[provider][variant]
	if !ok {
		var on []string
		for p, m := range installers {
			if _, ok := m[variant]; ok {
				on = append(on, p)
			}
		}
		sort.Strings(on)
		return nil, fmt.Errorf("variant %s cannot be installed on a %s cluster (it can on: %s)", variant, provider, strings.Join(on, ", "))
	}
	return in, nil
}

// Install installs variant on c with its provider's installer.
func Install(ctx context.Context, variant string, c clusters.Cluster) (Deployment, error) {
	in, err := InstallerFor(c.Provider(), variant)
	if err != nil {
		return nil, err
	}
	return in.Install(ctx, c)
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

// Prototyper is an Installer that can show, before installing, a deployment of the type Install
// returns (not installed), so that a scenario is checked for what its variants must do (restart,
// onboard pods) before any cluster exists.
type Prototyper interface {
	Prototype() Deployment
}

// Supports reports whether variant's deployments on provider are a T (Restarter, Onboarder,
// MetricsSource). False when the installer cannot tell.
func Supports[T any](provider, variant string) bool {
	in, err := InstallerFor(provider, variant)
	if err != nil {
		return false
	}
	p, ok := in.(Prototyper)
	if !ok {
		return false
	}
	_, ok = p.Prototype().(T)
	return ok
}
