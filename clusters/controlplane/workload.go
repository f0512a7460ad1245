package controlplane

import (
	"fmt"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// ClusterID is the lab's cluster name in workload ids, as istiod's default.
const ClusterID = "Kubernetes"

// workloadResources translates the store into Istio's ambient workload API resources, named
// as istiod names them: a Service per service with VIPs ("<namespace>/<hostname>"), a Workload
// per pod that backs a service ("<cluster>//Pod/<namespace>/<name>"), its services map saying
// which service ports it serves on which target port.
func workloadResources(snap services.Snapshot) map[string]*workloadapi.Address {
	out := map[string]*workloadapi.Address{}
	pods := map[string]*workloadapi.Workload{}
	for _, v := range snap.Services {
		if len(v.ClusterIPs) == 0 {
			continue
		}
		host := fmt.Sprintf("%s.%s.%s", v.Name, v.Namespace, DomainSuffix)
		svc := &workloadapi.Service{Name: v.Name, Namespace: v.Namespace, Hostname: host}
		for _, ip := range v.ClusterIPs {
			svc.Addresses = append(svc.Addresses, &workloadapi.NetworkAddress{Address: ip.AsSlice()})
		}
		ports := &workloadapi.PortList{}
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
		out[v.Namespace+"/"+host] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: svc}}
		for _, e := range v.Endpoints {
			uid := fmt.Sprintf("%s//Pod/%s/%s", ClusterID, v.Namespace, e.Pod)
			w := pods[uid]
			if w == nil {
				w = &workloadapi.Workload{Uid: uid, Name: e.Pod, Namespace: v.Namespace, Node: e.Node,
					ServiceAccount: "default", TrustDomain: "cluster.local", ClusterId: ClusterID,
					WorkloadName: e.Pod, CanonicalName: e.Pod, CanonicalRevision: "latest",
					Services: map[string]*workloadapi.PortList{}}
				for _, ip := range e.IPs {
					w.Addresses = append(w.Addresses, ip.AsSlice())
				}
				if !e.Ready {
					w.Status = workloadapi.WorkloadStatus_UNHEALTHY
				}
				pods[uid] = w
			}
			w.Services[v.Namespace+"/"+host] = ports
		}
	}
	for uid, w := range pods {
		out[uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	return out
}

// workloadPublisher keeps a linear cache at the store's workload API resources, updating only
// what changed.
type workloadPublisher struct {
	cache *cachev3.LinearCache
	last  map[string]*workloadapi.Address
}

func newWorkloadPublisher() *workloadPublisher {
	return &workloadPublisher{cache: cachev3.NewLinearCache(workloadapi.TypeURL), last: map[string]*workloadapi.Address{}}
}

func (p *workloadPublisher) publish(snap services.Snapshot) (changed int, err error) {
	next := workloadResources(snap)
	update := map[string]types.Resource{}
	for name, a := range next {
		if old, ok := p.last[name]; !ok || !proto.Equal(old, a) {
			update[name] = a
		}
	}
	var gone []string
	for name := range p.last {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	if len(update) == 0 && len(gone) == 0 {
		return 0, nil
	}
	if err := p.cache.UpdateResources(update, gone); err != nil {
		return 0, fmt.Errorf("workload API resources: %w", err)
	}
	p.last = next
	return len(update) + len(gone), nil
}

// isWorkloadType routes requests between the Envoy snapshot cache and the workload cache.
func isWorkloadType(typeURL string) bool { return typeURL == workloadapi.TypeURL }
