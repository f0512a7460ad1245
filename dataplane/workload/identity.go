package workload

import (
	"net/netip"
	"unique"

	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// WorkloadIdentity is who a workload is, as the workload API describes it: what telemetry
// labels a connection's peer with. Fields the control plane elided are empty (Istio elides the
// trust domain when it is the mesh default, typically cluster.local, and the service account
// when it is "default").
type WorkloadIdentity struct {
	UID               string `json:"uid"`
	Namespace         string `json:"namespace,omitempty"`
	WorkloadName      string `json:"workload_name,omitempty"` // workload_name, else the workload's name
	ServiceAccount    string `json:"service_account,omitempty"`
	CanonicalName     string `json:"canonical_name,omitempty"`
	CanonicalRevision string `json:"canonical_revision,omitempty"`
	TrustDomain       string `json:"trust_domain,omitempty"`
	ClusterID         string `json:"cluster_id,omitempty"`
	Node              string `json:"node,omitempty"`
}

// ServiceIdentity is the service behind a VIP.
type ServiceIdentity struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Hostname  string `json:"hostname"`
	// Waypoint: connections to this VIP are steered to the service's waypoint.
	Waypoint bool `json:"waypoint,omitempty"`
}

// identity is WorkloadIdentity as kept per workload. What the pods of one deployment share
// (namespace, names, service account, ...) is interned once for all of them, and so are node
// names: 100,000 workloads hold a few thousand copies of those strings, not 100,000, and 32
// bytes each.
type identity struct {
	uid    string
	shared unique.Handle[sharedIdentity]
	node   unique.Handle[string]
}

type sharedIdentity struct {
	namespace, workloadName, serviceAccount string
	canonicalName, canonicalRevision        string
	trustDomain, clusterID                  string
}

func newIdentity(name string, w *workloadapi.Workload) identity {
	uid := w.GetUid()
	if uid == "" || uid == name {
		uid = name // the resource name is the uid: keep one copy
	}
	wn := w.GetWorkloadName()
	if wn == "" {
		wn = w.GetName()
	}
	return identity{
		uid: uid,
		shared: unique.Make(sharedIdentity{
			namespace:         w.GetNamespace(),
			workloadName:      wn,
			serviceAccount:    w.GetServiceAccount(),
			canonicalName:     w.GetCanonicalName(),
			canonicalRevision: w.GetCanonicalRevision(),
			trustDomain:       w.GetTrustDomain(),
			clusterID:         w.GetClusterId(),
		}),
		node: unique.Make(w.GetNode()),
	}
}

func (id identity) public() WorkloadIdentity {
	sh := id.shared.Value()
	return WorkloadIdentity{
		UID:               id.uid,
		Namespace:         sh.namespace,
		WorkloadName:      sh.workloadName,
		ServiceAccount:    sh.serviceAccount,
		CanonicalName:     sh.canonicalName,
		CanonicalRevision: sh.canonicalRevision,
		TrustDomain:       sh.trustDomain,
		ClusterID:         sh.clusterID,
		Node:              id.node.Value(),
	}
}

// Identity returns the identity of the workload at ip. Workloads in HOST_NETWORK mode share
// their node's IP and are not found by it (as the workload API asks). Should two workloads
// claim one IP (a pod replaced before the old one's removal arrived), the one with the
// smallest uid is returned until the other goes.
func (s *State) Identity(ip netip.Addr) (WorkloadIdentity, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	name, ok := s.ips.owner(ip.Unmap())
	if !ok {
		return WorkloadIdentity{}, false
	}
	return s.workloads[name].id.public(), true
}

// ServiceByVIP returns the service reachable at vip (the one with the smallest name, should
// two claim it).
func (s *State) ServiceByVIP(vip netip.Addr) (ServiceIdentity, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vip = vip.Unmap()
	name, ok := s.vips.owner(vip)
	if !ok {
		return ServiceIdentity{}, false
	}
	r := s.services[name]
	id := ServiceIdentity{Namespace: r.namespace, Name: r.svcName, Hostname: r.hostname}
	if o := s.out[name]; o != nil {
		for _, st := range o.steered {
			if st.frontend.Addr() == vip {
				id.Waypoint = true
				break
			}
		}
	}
	return id, true
}
