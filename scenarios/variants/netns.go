package variants

import (
	"context"
	"sync"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
)

// NetnsVariant is a variant's deployment on the netns lab: the lab programs its nodes itself
// (clusters.NodeHost), so the deployment starts the variant's daemons, proxies and rules there.
type NetnsVariant interface {
	Variant
	Deployment
	Install(ctx context.Context, c clusters.Cluster) error
}

// netnsInstaller installs a variant on the netns lab: a new deployment per install, made for the
// cluster (variants that share node agents on one cluster get the same agents).
type netnsInstaller struct {
	new func(c clusters.Cluster) NetnsVariant
}

func (in netnsInstaller) Install(ctx context.Context, c clusters.Cluster) (Deployment, error) {
	d := in.new(c)
	if err := d.Install(ctx, c); err != nil {
		return nil, err
	}
	return d, nil
}

func (in netnsInstaller) Prototype() Deployment { return in.new(nil) }

// RegisterNetns registers a variant and its netns installer. new makes one deployment per
// install; with c nil it makes one that is only asked for the variant's name, description and
// capabilities.
func RegisterNetns(new func(c clusters.Cluster) NetnsVariant) {
	v := new(nil)
	Register(v)
	RegisterInstaller(netns.ProviderName, v.Name(), netnsInstaller{new: new})
}

// sharedAgents are the onehop agents of each netns cluster: onehop, its telemetry variants and
// onehop-waypoint enroll their pods with the same agent on each node, as they would with one
// DaemonSet. Onehop counts its users and stops the agents with the last.
var sharedAgents = struct {
	sync.Mutex
	byCluster map[string]*Onehop
}{byCluster: map[string]*Onehop{}}

// agentsOf returns the default onehop deployment of cluster c (a fresh one for c == nil).
func agentsOf(c clusters.Cluster) *Onehop {
	if c == nil {
		return &Onehop{}
	}
	sharedAgents.Lock()
	defer sharedAgents.Unlock()
	o := sharedAgents.byCluster[c.Name()]
	if o == nil { // kept after its last user: an uninstalled Onehop installs again

		o = &Onehop{}
		sharedAgents.byCluster[c.Name()] = o
	}
	return o
}
