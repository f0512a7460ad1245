package controlplane

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// ClusterID is the lab's cluster name in workload ids, as istiod's default.
const ClusterID = "Kubernetes"

// serviceAddress is a service's workload API resource, its name, and the ports its workloads
// serve it on; ok is false for a service without VIPs (headless: nothing to balance).
func serviceAddress(v services.ServiceView) (name string, a *workloadapi.Address, ports *workloadapi.PortList, ok bool) {
	if len(v.ClusterIPs) == 0 {
		return "", nil, nil, false
	}
	host := fmt.Sprintf("%s.%s.%s", v.Name, v.Namespace, DomainSuffix)
	svc := &workloadapi.Service{Name: v.Name, Namespace: v.Namespace, Hostname: host}
	for _, ip := range v.ClusterIPs {
		svc.Addresses = append(svc.Addresses, &workloadapi.NetworkAddress{Address: ip.AsSlice()})
	}
	ports = &workloadapi.PortList{}
	for _, p := range v.Ports {
		if p.Protocol != "TCP" {
			continue
		}
		wp := &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort)}
		if wp.TargetPort == 0 {
			wp.TargetPort = wp.ServicePort
		}
		svc.Ports = append(svc.Ports, wp)
		ports.Ports = append(ports.Ports, wp)
	}
	return v.Namespace + "/" + host, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: svc}}, ports, true
}

// podUID is istiod's workload resource name of a pod.
func podUID(namespace, pod string) string {
	return fmt.Sprintf("%s//Pod/%s/%s", ClusterID, namespace, pod)
}

// podWorkload is a pod's Workload as an endpoint describes it, without its services.
func podWorkload(namespace string, e services.Endpoint) *workloadapi.Workload {
	w := &workloadapi.Workload{Uid: podUID(namespace, e.Pod), Name: e.Pod, Namespace: namespace, Node: e.Node,
		ServiceAccount: "default", TrustDomain: "cluster.local", ClusterId: ClusterID,
		WorkloadName: e.Pod, CanonicalName: e.Pod, CanonicalRevision: "latest"}
	for _, ip := range e.IPs {
		w.Addresses = append(w.Addresses, ip.AsSlice())
	}
	if !e.Ready {
		w.Status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	return w
}

// workloadResources translates the store into Istio's ambient workload API resources, named
// as istiod names them: a Service per service with VIPs ("<namespace>/<hostname>"), a Workload
// per pod that backs a service ("<cluster>//Pod/<namespace>/<name>"), its services map saying
// which service ports it serves on which target port.
func workloadResources(snap services.Snapshot) map[string]*workloadapi.Address {
	p := newWorkloadPublisher()
	p.apply(services.Changes{Version: snap.Version, All: true, Services: snap.Services})
	out := map[string]*workloadapi.Address{}
	for _, c := range p.services {
		out[c.name] = c.addr
	}
	for uid, ps := range p.pods {
		out[uid] = ps.address()
	}
	return out
}

// workloadPublisher keeps a linear cache at the store's workload API resources, rebuilding
// only what the store's changes touch: the changed services and the pods backing them. It
// starts when the first client asks for the workload API: until then (agents in envoy mode)
// it costs nothing.
type workloadPublisher struct {
	mu       sync.Mutex
	wanted   bool
	cache    *cachev3.LinearCache
	applied  uint64
	services map[string]serviceContrib // by store key
	pods     map[string]*podState      // by uid
}

// serviceContrib is what one service puts in the resources.
type serviceContrib struct {
	name string
	addr *workloadapi.Address
	pods []string // the uids it names in their services maps
}

type podState struct {
	w        *workloadapi.Workload // without Services
	services map[string]*workloadapi.PortList
}

func (ps *podState) address() *workloadapi.Address {
	w := proto.Clone(ps.w).(*workloadapi.Workload)
	w.Services = maps.Clone(ps.services) // the cache keeps the message: later changes must not reach it
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func newWorkloadPublisher() *workloadPublisher {
	return &workloadPublisher{cache: cachev3.NewLinearCache(workloadapi.TypeURL),
		services: map[string]serviceContrib{}, pods: map[string]*podState{}}
}

// want starts publishing, if it has not started, and brings the cache to the store's state.
// The server calls it on a client's request, before the request is answered.
func (p *workloadPublisher) want(store *services.Store) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wanted {
		return nil
	}
	p.wanted = true
	return p.publishLocked(store)
}

// publish brings the cache to the store's current state, once a client has asked for it.
func (p *workloadPublisher) publish(store *services.Store) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.wanted {
		return nil
	}
	return p.publishLocked(store)
}

func (p *workloadPublisher) publishLocked(store *services.Store) error {
	update, gone, version := p.apply(store.ChangesSince(p.applied))
	if len(update) > 0 || len(gone) > 0 {
		if err := p.cache.UpdateResources(update, gone); err != nil {
			return fmt.Errorf("workload API resources: %w", err)
		}
	}
	p.applied = version
	return nil
}

// apply takes the store's changes into the publisher's state and returns the resources to
// update and to delete.
func (p *workloadPublisher) apply(ch services.Changes) (update map[string]types.Resource, gone []string, version uint64) {
	update = map[string]types.Resource{}
	removed := map[string]bool{}
	touched := map[string]bool{}
	drop := func(key string) {
		c, ok := p.services[key]
		if !ok {
			return
		}
		delete(p.services, key)
		removed[c.name] = true
		for _, uid := range c.pods {
			if ps := p.pods[uid]; ps != nil {
				delete(ps.services, c.name)
				touched[uid] = true
			}
		}
	}
	if ch.All {
		for key := range p.services {
			drop(key)
		}
	}
	for _, key := range ch.Deleted {
		drop(key)
	}
	for _, v := range ch.Services {
		drop(v.Key())
		name, addr, ports, ok := serviceAddress(v)
		if !ok {
			continue
		}
		c := serviceContrib{name: name, addr: addr}
		for _, e := range v.Endpoints {
			uid := podUID(v.Namespace, e.Pod)
			ps := p.pods[uid]
			if ps == nil {
				ps = &podState{services: map[string]*workloadapi.PortList{}}
				p.pods[uid] = ps
			}
			ps.w = podWorkload(v.Namespace, e) // the store's latest view of the pod
			ps.services[name] = ports
			c.pods = append(c.pods, uid)
			touched[uid] = true
		}
		p.services[v.Key()] = c
		update[name] = addr
		delete(removed, name)
	}
	for uid := range touched {
		ps := p.pods[uid]
		if len(ps.services) == 0 {
			delete(p.pods, uid)
			removed[uid] = true
			continue
		}
		update[uid] = ps.address()
		delete(removed, uid)
	}
	gone = slices.Sorted(maps.Keys(removed))
	return update, gone, ch.Version
}

// isWorkloadType routes requests between the Envoy snapshot cache and the workload cache.
func isWorkloadType(typeURL string) bool { return typeURL == workloadapi.TypeURL }
