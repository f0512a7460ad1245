package variants

import (
	"context"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
)

// namedCluster is a cluster that only has a name: enough for an installer's choice of agents.
type namedCluster struct {
	clusters.Cluster
	name string
}

func (c namedCluster) Name() string     { return c.name }
func (c namedCluster) Provider() string { return "elsewhere" }

// A variant is installed by its provider's installer; a provider without one is refused by
// name, and nothing is installed.
func TestInstallerPerProvider(t *testing.T) {
	for _, name := range Names() {
		if _, err := InstallerFor(netns.ProviderName, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := Install(context.Background(), "sidecar", namedCluster{name: "x"})
	if err == nil || !strings.Contains(err.Error(), "cannot be installed on a elsewhere cluster") || !strings.Contains(err.Error(), netns.ProviderName) {
		t.Errorf("install on a provider without an installer: %v", err)
	}
	if _, err := InstallerFor(netns.ProviderName, "no-such-variant"); err == nil || !strings.Contains(err.Error(), "unknown variant") {
		t.Errorf("unknown variant: %v", err)
	}
}

// What a scenario checks before a cluster exists agrees with the deployments installed.
func TestSupportsMatchesDeployments(t *testing.T) {
	for _, name := range Names() {
		in, _ := InstallerFor(netns.ProviderName, name)
		d := in.(netnsInstaller).new(namedCluster{name: "support-" + name})
		_, restarts := d.(Restarter)
		_, onboards := d.(Onboarder)
		_, metrics := d.(MetricsSource)
		if Supports[Restarter](netns.ProviderName, name) != restarts || Supports[Onboarder](netns.ProviderName, name) != onboards ||
			Supports[MetricsSource](netns.ProviderName, name) != metrics {
			t.Errorf("%s: Supports disagrees with its deployment (restart %v, onboard %v, metrics %v)", name, restarts, onboards, metrics)
		}
	}
	if !Supports[Restarter](netns.ProviderName, "onehop") || Supports[Restarter]("elsewhere", "onehop") {
		t.Error("onehop restarts on the netns lab, and nowhere else yet")
	}
}

// Every install gets a deployment of its own, except onehop's agents, which the onehop variants
// of one cluster share (one agent per node) and another cluster does not.
func TestDeploymentsAreNotShared(t *testing.T) {
	new := func(name string, c clusters.Cluster) NetnsVariant {
		in, err := InstallerFor(netns.ProviderName, name)
		if err != nil {
			t.Fatal(err)
		}
		return in.(netnsInstaller).new(c)
	}
	a, b := namedCluster{name: "seam-a"}, namedCluster{name: "seam-b"}
	if new("sidecar", a) == new("sidecar", a) {
		t.Error("two sidecar installs share one deployment")
	}
	oa := new("onehop", a).(*Onehop)
	if new("onehop", a).(*Onehop) != oa || new("onehop-telemetry-off", a).(*OnehopWith).base != oa ||
		new("onehop-sockmap", a).(*OnehopWith).base != oa || new("sidecar-sockmap", a).(*SidecarSockmap).agents != oa ||
		new("onehop-waypoint", a).(*OnehopWaypoint).base != oa {
		t.Error("the onehop variants of one cluster do not share its agents")
	}
	if new("onehop", b).(*Onehop) == oa {
		t.Error("two clusters share onehop agents")
	}
}

// On Kubernetes, Istio's variants need its images from a registry: installing one says so.
func TestIstioOnKubernetesSaysRegistry(t *testing.T) {
	_, err := Install(context.Background(), "sidecar", kubeNamed{namedCluster{name: "k"}})
	if err == nil || !strings.Contains(err.Error(), "registry") || !strings.Contains(err.Error(), "--provider netns") {
		t.Errorf("sidecar on kube: %v", err)
	}
}

type kubeNamed struct{ namedCluster }

func (kubeNamed) Provider() string { return "kube" }
