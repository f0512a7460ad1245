// Package services is the lab's service and endpoint store: ClusterIP services with VIPs from the
// service CIDR, and the pod endpoints their selectors pick. It is the one source of truth every
// data plane variant reads (kube-proxy-style rules, the xDS control plane, proxy configs), so
// they all see the same services at the same version.
package services

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Protocol is TCP or UDP.
type Protocol string

// Port is one service port.
type Port struct {
	Name       string   `json:"name"`
	Port       uint16   `json:"port"`
	TargetPort uint16   `json:"targetPort"`
	Protocol   Protocol `json:"protocol"`
}

// Service is a ClusterIP service.
type Service struct {
	Namespace  string            `json:"namespace"`
	Name       string            `json:"name"`
	ClusterIPs []netip.Addr      `json:"clusterIPs"` // one per IP family, primary first
	Selector   map[string]string `json:"selector"`
	Ports      []Port            `json:"ports"`
}

// Key returns "namespace/name".
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// Pod is what the store needs to know of a pod to make it an endpoint.
type Pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Node      string            `json:"node"`
	IPs       []netip.Addr      `json:"ips"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ready     bool              `json:"ready"`
}

// Endpoint is one pod backing a service.
type Endpoint struct {
	Pod   string       `json:"pod"`
	Node  string       `json:"node"`
	IPs   []netip.Addr `json:"ips"`
	Ready bool         `json:"ready"`
}

// ServiceView is a service with its current endpoints, sorted by pod name.
type ServiceView struct {
	Service
	Endpoints []Endpoint `json:"endpoints"`
}

// Snapshot is a consistent view of the whole store.
type Snapshot struct {
	Version      uint64         `json:"version"`
	ServiceCIDRs []netip.Prefix `json:"service_cidrs"` // where VIPs come from, primary family first
	Services     []ServiceView  `json:"services"`      // sorted by key
}

// Changes is what changed in a store after some version.
type Changes struct {
	Version uint64
	// All is set when the store cannot tell what changed after that version (it is 0, or the
	// store was restored since): Services then holds every service.
	All      bool
	Services []ServiceView // the changed services that exist, sorted by key
	Deleted  []string      // the keys of changed services that no longer exist, sorted
}

// Store holds services and pods. It is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	version  uint64
	cidrs    []netip.Prefix // service CIDRs, primary family first
	services map[string]Service
	vips     map[netip.Addr]string // VIP -> service key, so allocation is not a scan of services
	pods     map[string]Pod
	watchers []chan struct{}

	// The label indexes make a pod change cost the services it touches, not all services.
	podsByLabel map[label]map[string]struct{} // pod labels -> pod names
	svcsByLabel map[label]map[string]struct{} // selector terms -> service keys
	// changedAt is the version at which each service key (deleted ones too) last changed, so
	// consumers can rebuild only what changed; restoredAt is the version of the last restore.
	changedAt  map[string]uint64
	restoredAt uint64
}

// label is one namespaced label or selector term.
type label struct{ ns, k, v string }

// New returns an empty store that allocates VIPs from the given service CIDRs (one per family).
func New(serviceCIDRs ...netip.Prefix) *Store {
	s := &Store{cidrs: serviceCIDRs}
	s.reset()
	return s
}

func (s *Store) reset() {
	s.services, s.vips, s.pods = map[string]Service{}, map[netip.Addr]string{}, map[string]Pod{}
	s.podsByLabel, s.svcsByLabel, s.changedAt = map[label]map[string]struct{}{}, map[label]map[string]struct{}{}, map[string]uint64{}
}

// UpsertService adds or replaces a service. Missing ClusterIPs are allocated from the service
// CIDRs; a replaced service keeps the VIPs it had, as in Kubernetes.
func (s *Store) UpsertService(svc Service) (Service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.services[svc.Key()]; ok {
		// VIPs are immutable, as in Kubernetes: clients and programmed rules hold on to them.
		if len(svc.ClusterIPs) > 0 && !slices.Equal(svc.ClusterIPs, old.ClusterIPs) {
			return Service{}, fmt.Errorf("service %s: cluster IPs %v cannot change to %v; delete and re-create the service", svc.Key(), old.ClusterIPs, svc.ClusterIPs)
		}
		svc.ClusterIPs = old.ClusterIPs
	}
	for _, ip := range svc.ClusterIPs {
		if !slices.ContainsFunc(s.cidrs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			return Service{}, fmt.Errorf("service %s: cluster IP %s is outside the service CIDRs %v", svc.Key(), ip, s.cidrs)
		}
	}
	if len(svc.ClusterIPs) == 0 {
		for _, cidr := range s.cidrs {
			ip, err := s.allocate(cidr)
			if err != nil {
				return Service{}, fmt.Errorf("service %s: %w", svc.Key(), err)
			}
			svc.ClusterIPs = append(svc.ClusterIPs, ip)
		}
	}
	for _, ip := range svc.ClusterIPs {
		if owner := s.vipOwner(ip); owner != "" && owner != svc.Key() {
			return Service{}, fmt.Errorf("service %s: cluster IP %s is already used by service %s", svc.Key(), ip, owner)
		}
	}
	s.unindexService(svc.Key())
	s.indexService(svc)
	s.changed(svc.Key())
	return svc, nil
}

// DeleteService removes a service; deleting a missing one is not an error.
func (s *Store) DeleteService(namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.services[namespace+"/"+name]; ok {
		s.unindexService(namespace + "/" + name)
		s.changed(namespace + "/" + name)
	}
}

// UpsertPod adds or replaces a pod; the endpoints of every service selecting it follow.
func (s *Store) UpsertPod(p Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	touched := s.unindexPod(p.Name)
	s.indexPod(p)
	s.changed(append(touched, s.selecting(p)...)...)
}

// DeletePod removes a pod and with it its endpoints.
func (s *Store) DeletePod(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pods[name]; ok {
		s.changed(s.unindexPod(name)...)
	}
}

// HasPod reports whether the store knows the pod.
func (s *Store) HasPod(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.pods[name]
	return ok
}

// Pods returns every pod, sorted by name.
func (s *Store) Pods() []Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Pod, 0, len(s.pods))
	for _, p := range s.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Snapshot returns the services with their endpoints at the current version.
func (s *Store) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Version: s.version, ServiceCIDRs: slices.Clone(s.cidrs)}
	for _, svc := range s.services {
		snap.Services = append(snap.Services, s.view(svc))
	}
	sort.Slice(snap.Services, func(i, j int) bool { return snap.Services[i].Key() < snap.Services[j].Key() })
	return snap
}

// Version returns the store's current version.
func (s *Store) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// ChangesSince returns the services that changed after version (a version this store
// returned), in their current state, so that a consumer can update only those.
func (s *Store) ChangesSince(version uint64) Changes {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Changes{Version: s.version, All: version == 0 || version <= s.restoredAt || version > s.version}
	if out.All {
		for _, svc := range s.services {
			out.Services = append(out.Services, s.view(svc))
		}
	}
	for key, at := range s.changedAt {
		if out.All || at <= version {
			continue
		}
		if svc, ok := s.services[key]; ok {
			out.Services = append(out.Services, s.view(svc))
		} else {
			out.Deleted = append(out.Deleted, key)
		}
	}
	sort.Slice(out.Services, func(i, j int) bool { return out.Services[i].Key() < out.Services[j].Key() })
	slices.Sort(out.Deleted)
	return out
}

// view is a service with its endpoints; the caller holds the lock.
func (s *Store) view(svc Service) ServiceView {
	v := ServiceView{Service: svc, Endpoints: []Endpoint{}}
	var candidates map[string]struct{}
	for k, val := range svc.Selector { // any one selector term narrows the candidates
		candidates = s.podsByLabel[label{svc.Namespace, k, val}]
		break
	}
	for name := range candidates {
		if p := s.pods[name]; selects(svc.Selector, p.Labels) {
			v.Endpoints = append(v.Endpoints, Endpoint{Pod: p.Name, Node: p.Node, IPs: p.IPs, Ready: p.Ready})
		}
	}
	sort.Slice(v.Endpoints, func(i, j int) bool { return v.Endpoints[i].Pod < v.Endpoints[j].Pod })
	return v
}

// selecting returns the keys of the services whose selectors pick p; the caller holds the lock.
func (s *Store) selecting(p Pod) []string {
	var keys []string
	for k, v := range p.Labels {
		for key := range s.svcsByLabel[label{p.Namespace, k, v}] {
			if selects(s.services[key].Selector, p.Labels) && !slices.Contains(keys, key) {
				keys = append(keys, key)
			}
		}
	}
	return keys
}

func (s *Store) indexPod(p Pod) {
	s.pods[p.Name] = p
	for k, v := range p.Labels {
		addTo(s.podsByLabel, label{p.Namespace, k, v}, p.Name)
	}
}

// unindexPod removes a pod, if present, and returns the keys of the services that selected it.
func (s *Store) unindexPod(name string) []string {
	p, ok := s.pods[name]
	if !ok {
		return nil
	}
	touched := s.selecting(p)
	delete(s.pods, name)
	for k, v := range p.Labels {
		removeFrom(s.podsByLabel, label{p.Namespace, k, v}, name)
	}
	return touched
}

func (s *Store) indexService(svc Service) {
	s.services[svc.Key()] = svc
	for _, ip := range svc.ClusterIPs {
		s.vips[ip] = svc.Key()
	}
	for k, v := range svc.Selector {
		addTo(s.svcsByLabel, label{svc.Namespace, k, v}, svc.Key())
	}
}

func (s *Store) unindexService(key string) {
	svc, ok := s.services[key]
	if !ok {
		return
	}
	delete(s.services, key)
	for _, ip := range svc.ClusterIPs {
		delete(s.vips, ip)
	}
	for k, v := range svc.Selector {
		removeFrom(s.svcsByLabel, label{svc.Namespace, k, v}, key)
	}
}

func addTo(index map[label]map[string]struct{}, l label, name string) {
	if index[l] == nil {
		index[l] = map[string]struct{}{}
	}
	index[l][name] = struct{}{}
}

func removeFrom(index map[label]map[string]struct{}, l label, name string) {
	delete(index[l], name)
	if len(index[l]) == 0 {
		delete(index, l)
	}
}

// Service returns one service view from a snapshot.
func (snap Snapshot) Service(namespace, name string) (ServiceView, bool) {
	for _, v := range snap.Services {
		if v.Namespace == namespace && v.Name == name {
			return v, true
		}
	}
	return ServiceView{}, false
}

// Watch returns a channel that receives a value after every change (coalesced: a slow reader
// sees one notification for many changes and reads the latest Snapshot).
func (s *Store) Watch() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{}, 1)
	s.watchers = append(s.watchers, ch)
	return ch
}

// changed starts a new version in which the given services changed.
func (s *Store) changed(keys ...string) {
	s.version++
	for _, k := range keys {
		s.changedAt[k] = s.version
	}
	for _, ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (s *Store) vipOwner(ip netip.Addr) string { return s.vips[ip] }

// allocate returns the lowest free address of cidr, skipping the network address and, in IPv4,
// the broadcast address.
func (s *Store) allocate(cidr netip.Prefix) (netip.Addr, error) {
	for ip := cidr.Addr().Next(); cidr.Contains(ip); ip = ip.Next() {
		if ip.Is4() && !cidr.Contains(ip.Next()) {
			break
		}
		if s.vipOwner(ip) == "" {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("service CIDR %s is exhausted", cidr)
}

// state is the persisted form of a store.
type state struct {
	Version  uint64         `json:"version"`
	CIDRs    []netip.Prefix `json:"serviceCIDRs"`
	Services []Service      `json:"services"`
	Pods     []Pod          `json:"pods"`
}

// MarshalJSON persists the store's contents (not its watchers).
func (s *Store) MarshalJSON() ([]byte, error) {
	s.mu.Lock()
	st := state{Version: s.version, CIDRs: s.cidrs}
	for _, svc := range s.services {
		st.Services = append(st.Services, svc)
	}
	for _, p := range s.pods {
		st.Pods = append(st.Pods, p)
	}
	s.mu.Unlock()
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Key() < st.Services[j].Key() })
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].Name < st.Pods[j].Name })
	return json.Marshal(st)
}

// UnmarshalJSON restores a store written by MarshalJSON.
func (s *Store) UnmarshalJSON(b []byte) error {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("service store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version, s.cidrs, s.restoredAt = st.Version, st.CIDRs, st.Version
	s.reset()
	for _, svc := range st.Services {
		s.indexService(svc)
	}
	for _, p := range st.Pods {
		s.indexPod(p)
	}
	return nil
}

// String renders the snapshot as a short table for `cluster status`.
func (snap Snapshot) String() string {
	var b strings.Builder
	for _, v := range snap.Services {
		fmt.Fprintf(&b, "%s %v", v.Key(), v.ClusterIPs)
		for _, p := range v.Ports {
			fmt.Fprintf(&b, " %d->%d/%s", p.Port, p.TargetPort, p.Protocol)
		}
		b.WriteString(":")
		for _, e := range v.Endpoints {
			fmt.Fprintf(&b, " %s(%s,%v", e.Pod, e.Node, e.IPs)
			if !e.Ready {
				b.WriteString(",not-ready")
			}
			b.WriteString(")")
		}
		b.WriteString("\n")
	}
	return b.String()
}
