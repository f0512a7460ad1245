// Package workload translates Istio's ambient workload API (istio.workload.Address resources:
// Services and Workloads, served over Delta ADS to ztunnel and Kmesh) into the agent's plain
// model (dataplane/model), and follows a control plane that serves it (Client).
//
// A Service address becomes one model.Service per (VIP, service port). Its endpoints are the
// workloads whose services map names it ("namespace/hostname"), at the target port the
// workload or the Service gives, weighted by capacity, healthy ones only unless the Service
// allows all. A Service with a waypoint is steered at connect() to the waypoint instead
// (Kmesh's "dual engine"). Along the way it keeps who is behind each workload IP and each VIP
// (Identity, ServiceByVIP), for telemetry.
//
// State holds the resources in a compact form (not as decoded protos) and re-translates only
// the services a change touches; Translate is the one-shot form over a set of resources.
package workload

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"unique"

	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// Options tune the translation.
type Options struct {
	// Network, if not empty, is the network of the agent's node: service VIPs and workload
	// addresses on other networks are left out (a workload behind another network's gateway
	// cannot be reached directly). Istio leaves the default network's name empty. Empty: every
	// address is used, whatever its network, as suits a single-network mesh.
	Network string
}

// Issue is a problem with one resource that kept it, or one of its frontends, out of the
// model, or left part of it out. It never fails the translation of the others.
type Issue struct {
	// Resource is the resource's name: a workload's uid, a service's "namespace/hostname".
	Resource string `json:"resource"`
	// Frontend is the service frontend (VIP:port) concerned, if any (TCP).
	Frontend netip.AddrPort `json:"frontend,omitzero"`
	Reason   string         `json:"reason"`
}

func (i Issue) String() string {
	if i.Frontend.IsValid() {
		return fmt.Sprintf("%s (%s): %s", i.Resource, i.Frontend, i.Reason)
	}
	return fmt.Sprintf("%s: %s", i.Resource, i.Reason)
}

// State is a set of Address resources, kept translated: Update and Remove change it, and
// Translate re-translates the services the changes touched. Safe for concurrent use; lookups
// (Identity, ServiceByVIP, Services) may run while another goroutine updates it.
type State struct {
	opts Options

	mu        sync.RWMutex
	services  map[string]*serviceRec  // by name: "namespace/hostname"
	workloads map[string]*workloadRec // by resource name (uid)

	members   map[string]map[string]struct{} // service name -> workloads naming it
	wpUsers   map[string]map[string]struct{} // service name -> services whose waypoint names it
	frontends claims[model.Key]              // frontend -> services having it
	vips      claims[netip.Addr]             // VIP -> services having it
	ips       claims[netip.Addr]             // workload IP -> workloads (not host-network ones)
	wIssues   map[string][]Issue             // workloads with issues

	dirty   map[string]struct{} // services to translate again
	out     map[string]*svcOut  // per service: what the last translation made of it
	cfg     map[model.Key]model.Service
	steered int // frontends steered to a waypoint in cfg
}

// NewState returns an empty State.
func NewState(opts Options) *State {
	return &State{
		opts:      opts,
		services:  map[string]*serviceRec{},
		workloads: map[string]*workloadRec{},
		members:   map[string]map[string]struct{}{},
		wpUsers:   map[string]map[string]struct{}{},
		frontends: newClaims[model.Key](),
		vips:      newClaims[netip.Addr](),
		ips:       newClaims[netip.Addr](),
		wIssues:   map[string][]Issue{},
		dirty:     map[string]struct{}{},
		out:       map[string]*svcOut{},
		cfg:       map[model.Key]model.Service{},
	}
}

// Len returns the number of Service and Workload resources held.
func (s *State) Len() (services, workloads int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.services), len(s.workloads)
}

// Update adds or replaces the resource called name. It refuses, with the reason, an Address
// that holds neither a workload nor a service, and a Service that lacks its namespace or
// hostname or is not named "namespace/hostname" (its name in the workload API); the resource
// held under that name before, if any, stays. Other problems (a malformed address, a port out
// of range, ...) do not refuse it: Translate reports them as issues.
func (s *State) Update(name string, a *workloadapi.Address) error {
	if name == "" {
		return errors.New("resource without a name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case a.GetService() != nil:
		svc := a.GetService()
		if svc.GetNamespace() == "" || svc.GetHostname() == "" {
			return errors.New("service without a namespace or hostname")
		}
		if want := svc.GetNamespace() + "/" + svc.GetHostname(); name != want {
			return fmt.Errorf("service resource must be named %q (namespace/hostname)", want)
		}
		s.removeWorkload(name)
		s.setService(name, newServiceRec(name, svc, s.opts))
	case a.GetWorkload() != nil:
		s.removeService(name)
		rec, issues := newWorkloadRec(name, a.GetWorkload(), s.opts)
		s.setWorkload(name, rec, issues)
	default:
		return errors.New("address holds neither a workload nor a service")
	}
	return nil
}

// Remove deletes the resource called name, if held.
func (s *State) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeService(name)
	s.removeWorkload(name)
}

func (s *State) markDirty(names map[string]struct{}) {
	for n := range names {
		s.dirty[n] = struct{}{}
	}
}

func (s *State) setService(name string, rec *serviceRec) {
	old := s.services[name]
	s.services[name] = rec
	s.serviceChanged(name, old, rec)
}

func (s *State) removeService(name string) {
	old, ok := s.services[name]
	if !ok {
		return
	}
	delete(s.services, name)
	s.serviceChanged(name, old, nil)
}

// serviceChanged updates the indexes for a service going from old to rec (either nil) and
// marks what must be translated again: the service, the services using it as their waypoint,
// and every service sharing a frontend it gained or lost.
func (s *State) serviceChanged(name string, old, rec *serviceRec) {
	s.dirty[name] = struct{}{}
	s.markDirty(s.wpUsers[name])
	oldF, newF := old.frontendKeys(), rec.frontendKeys()
	if !slices.Equal(oldF, newF) {
		for _, k := range oldF {
			s.frontends.remove(k, name)
		}
		for _, k := range newF {
			s.frontends.add(k, name)
		}
		for _, k := range append(oldF, newF...) {
			for _, other := range s.frontends.all(k) {
				s.dirty[other] = struct{}{}
			}
		}
	}
	if oldV, newV := old.vipList(), rec.vipList(); !slices.Equal(oldV, newV) {
		for _, v := range oldV {
			s.vips.remove(v, name)
		}
		for _, v := range newV {
			s.vips.add(v, name)
		}
	}
	if o, n := old.waypointHost(), rec.waypointHost(); o != n {
		if o != "" {
			removeFromSet(s.wpUsers, o, name)
		}
		if n != "" {
			addToSet(s.wpUsers, n, name)
		}
	}
}

func (s *State) setWorkload(name string, rec *workloadRec, issues []Issue) {
	old := s.workloads[name]
	s.workloads[name] = rec
	if len(issues) > 0 {
		s.wIssues[name] = issues
	} else {
		delete(s.wIssues, name)
	}
	s.workloadChanged(name, old, rec)
}

func (s *State) removeWorkload(name string) {
	old, ok := s.workloads[name]
	if !ok {
		return
	}
	delete(s.workloads, name)
	delete(s.wIssues, name)
	s.workloadChanged(name, old, nil)
}

func (s *State) workloadChanged(name string, old, rec *workloadRec) {
	if oldIPs, newIPs := old.indexedIPs(), rec.indexedIPs(); !slices.Equal(oldIPs, newIPs) {
		for _, ip := range oldIPs {
			s.ips.remove(ip, name)
		}
		for _, ip := range newIPs {
			s.ips.add(ip, name)
		}
	}
	if sameEndpoints(old, rec) {
		return // a change to its identity only: no service's endpoints change
	}
	// The services it serves change, and so do the services using those as their waypoint:
	// they are balanced over the waypoint's pods.
	if old != nil {
		for _, m := range old.services {
			svc := m.service.Value()
			removeFromSet(s.members, svc, name)
			s.dirty[svc] = struct{}{}
			s.markDirty(s.wpUsers[svc])
		}
	}
	if rec != nil {
		for _, m := range rec.services {
			svc := m.service.Value()
			addToSet(s.members, svc, name)
			s.dirty[svc] = struct{}{}
			s.markDirty(s.wpUsers[svc])
		}
	}
}

func addToSet(m map[string]map[string]struct{}, k, v string) {
	set := m[k]
	if set == nil {
		set = map[string]struct{}{}
		m[k] = set
	}
	set[v] = struct{}{}
}

func removeFromSet(m map[string]map[string]struct{}, k, v string) {
	if set := m[k]; set != nil {
		delete(set, v)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// claims maps a key to the names holding it; the smallest name owns it, so the owner does not
// depend on the order of updates.
type claims[K comparable] struct {
	one  map[K]string
	more map[K][]string // sorted; only keys held by two or more names
}

func newClaims[K comparable]() claims[K] {
	return claims[K]{one: map[K]string{}, more: map[K][]string{}}
}

func (c claims[K]) add(k K, name string) {
	if ns, ok := c.more[k]; ok {
		if i, found := slices.BinarySearch(ns, name); !found {
			c.more[k] = slices.Insert(ns, i, name)
		}
		return
	}
	cur, ok := c.one[k]
	switch {
	case !ok:
		c.one[k] = name
	case cur != name:
		ns := []string{cur, name}
		slices.Sort(ns)
		c.more[k] = ns
		delete(c.one, k)
	}
}

func (c claims[K]) remove(k K, name string) {
	if ns, ok := c.more[k]; ok {
		if i, found := slices.BinarySearch(ns, name); found {
			ns = slices.Delete(ns, i, i+1)
		}
		if len(ns) == 1 {
			delete(c.more, k)
			c.one[k] = ns[0]
		} else {
			c.more[k] = ns
		}
		return
	}
	if c.one[k] == name {
		delete(c.one, k)
	}
}

func (c claims[K]) owner(k K) (string, bool) {
	if ns, ok := c.more[k]; ok {
		return ns[0], true
	}
	n, ok := c.one[k]
	return n, ok
}

func (c claims[K]) all(k K) []string {
	if ns, ok := c.more[k]; ok {
		return ns
	}
	if n, ok := c.one[k]; ok {
		return []string{n}
	}
	return nil
}

// portPair maps a service port to a target port; 0 is unset.
type portPair struct{ port, target uint16 }

// gateway is a Service's waypoint: an address, or the name of the Service that is it.
type gateway struct {
	addr    netip.Addr
	service string // "namespace/hostname"
	port    uint16 // hbone_mtls_port
	invalid string // why it cannot be used
}

// serviceRec is a Service resource as the translation needs it.
type serviceRec struct {
	name      string // "namespace/hostname"
	namespace string
	svcName   string
	hostname  string
	vips      []netip.Addr // usable VIPs, in the resource's order, no duplicates
	ports     []portPair   // usable ports, no duplicates
	waypoint  *gateway
	allowAll  bool    // load_balancing.health_policy ALLOW_ALL: unhealthy workloads are endpoints too
	issues    []Issue // problems of the resource alone
}

func newServiceRec(name string, svc *workloadapi.Service, opts Options) *serviceRec {
	r := &serviceRec{name: name, namespace: svc.GetNamespace(), svcName: svc.GetName(), hostname: svc.GetHostname()}
	issue := func(format string, args ...any) {
		r.issues = append(r.issues, Issue{Resource: name, Reason: fmt.Sprintf(format, args...)})
	}
	for _, na := range svc.GetAddresses() {
		if opts.Network != "" && na.GetNetwork() != opts.Network {
			continue
		}
		ip, ok := netip.AddrFromSlice(na.GetAddress())
		if !ok {
			issue("service address of %d bytes (want 4 or 16): not programmed", len(na.GetAddress()))
			continue
		}
		if na.Length != nil && int(na.GetLength()) != ip.BitLen() {
			issue("service address %s/%d is a CIDR range, not a VIP: not programmed", ip, na.GetLength())
			continue
		}
		if ip = ip.Unmap(); ip.IsUnspecified() {
			issue("service address %s cannot be a VIP: not programmed", ip)
			continue
		}
		if !slices.Contains(r.vips, ip) {
			r.vips = append(r.vips, ip)
		}
	}
	for _, p := range svc.GetPorts() {
		sp, tp := p.GetServicePort(), p.GetTargetPort()
		switch {
		case sp == 0 || sp > 65535:
			issue("service port %d out of range: not programmed", sp)
			continue
		case tp > 65535:
			issue("service port %d: target port %d out of range: not programmed", sp, tp)
			continue
		case slices.Contains(r.ports, portPair{uint16(sp), uint16(tp)}):
			continue // the same port twice: istiod lists a TCP and a UDP port of one number so (kube-dns)
		case slices.ContainsFunc(r.ports, func(q portPair) bool { return q.port == uint16(sp) }):
			issue("service port %d listed twice with different target ports (a TCP and a UDP port?): the first one is used", sp)
			continue
		}
		r.ports = append(r.ports, portPair{uint16(sp), uint16(tp)})
	}
	if len(r.vips) > 0 && len(r.ports) == 0 {
		issue("service has no ports: not programmed")
	}
	if wp := svc.GetWaypoint(); wp != nil {
		r.waypoint = newGateway(wp)
	}
	r.allowAll = svc.GetLoadBalancing().GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL
	return r
}

func newGateway(wp *workloadapi.GatewayAddress) *gateway {
	g := &gateway{}
	p := wp.GetHboneMtlsPort()
	if p > 65535 {
		g.invalid = fmt.Sprintf("waypoint port %d out of range", p)
		return g
	}
	g.port = uint16(p)
	switch {
	case wp.GetAddress() != nil:
		ip, ok := netip.AddrFromSlice(wp.GetAddress().GetAddress())
		if !ok || ip.IsUnspecified() {
			g.invalid = fmt.Sprintf("waypoint address of %d bytes is not an IP address", len(wp.GetAddress().GetAddress()))
		}
		g.addr = ip.Unmap()
	case wp.GetHostname() != nil:
		h := wp.GetHostname()
		if h.GetNamespace() == "" || h.GetHostname() == "" {
			g.invalid = "waypoint hostname without a namespace or hostname"
		}
		g.service = h.GetNamespace() + "/" + h.GetHostname()
	default:
		g.invalid = "waypoint has neither an address nor a hostname"
	}
	return g
}

// frontendKeys lists the service's frontends, sorted.
func (r *serviceRec) frontendKeys() []model.Key {
	if r == nil {
		return nil
	}
	keys := make([]model.Key, 0, len(r.vips)*len(r.ports))
	for _, v := range r.vips {
		for _, p := range r.ports {
			keys = append(keys, model.Key{VIP: v, Port: p.port, Proto: model.TCP})
		}
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

func (r *serviceRec) vipList() []netip.Addr {
	if r == nil {
		return nil
	}
	return r.vips
}

func (r *serviceRec) waypointHost() string {
	if r == nil || r.waypoint == nil {
		return ""
	}
	return r.waypoint.service
}

func compareKeys(a, b model.Key) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Proto, b.Proto)
}

// membership is one entry of a workload's services map.
type membership struct {
	service unique.Handle[string] // "namespace/hostname"
	ports   []portPair
}

// workloadRec is a Workload resource as the translation and the identity lookups need it:
// about 100 bytes and its addresses and memberships (a mesh may have 100,000 workloads).
type workloadRec struct {
	ips      []netip.Addr // usable addresses, sorted, no duplicates
	services []membership // sorted by service
	id       identity
	capacity uint32 // the endpoints' weight; 0: not an endpoint
	healthy  bool
	hostNet  bool // network_mode HOST_NETWORK: its IP is shared, so it is not indexed by IP
}

// indexedIPs are the IPs under which Identity finds the workload.
func (w *workloadRec) indexedIPs() []netip.Addr {
	if w == nil || w.hostNet {
		return nil
	}
	return w.ips
}

// newWorkloadRec converts a Workload, with the problems found in it.
func newWorkloadRec(name string, w *workloadapi.Workload, opts Options) (*workloadRec, []Issue) {
	r := &workloadRec{
		healthy:  w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY,
		hostNet:  w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK,
		capacity: 1,
		id:       newIdentity(name, w),
	}
	var issues []Issue
	issue := func(format string, args ...any) {
		issues = append(issues, Issue{Resource: name, Reason: fmt.Sprintf(format, args...)})
	}
	if c := w.GetCapacity(); c != nil {
		r.capacity = c.GetValue()
		if r.capacity > model.MaxWeight {
			issue("capacity %d over %d: weighted as %d", r.capacity, model.MaxWeight, model.MaxWeight)
			r.capacity = model.MaxWeight
		}
	}
	if opts.Network == "" || w.GetNetwork() == opts.Network {
		for _, b := range w.GetAddresses() {
			ip, ok := netip.AddrFromSlice(b)
			if !ok || ip.IsUnspecified() {
				issue("workload address of %d bytes (want 4 or 16): not an endpoint", len(b))
				continue
			}
			ip = ip.Unmap()
			if !slices.Contains(r.ips, ip) {
				r.ips = append(r.ips, ip)
			}
		}
		if len(w.GetAddresses()) == 0 && len(w.GetServices()) > 0 {
			if w.GetHostname() != "" {
				issue("workload has a hostname (%s) and no address: DNS endpoints are not supported, not an endpoint", w.GetHostname())
			} else {
				issue("workload has no address: not an endpoint")
			}
		}
	}
	slices.SortFunc(r.ips, netip.Addr.Compare)
	for key, pl := range w.GetServices() {
		m := membership{service: unique.Make(key)}
		for _, p := range pl.GetPorts() {
			sp, tp := p.GetServicePort(), p.GetTargetPort()
			if sp == 0 || sp > 65535 || tp > 65535 {
				issue("service %s: port %d -> %d out of range: ignored", key, sp, tp)
				continue
			}
			m.ports = append(m.ports, portPair{uint16(sp), uint16(tp)})
		}
		r.services = append(r.services, m)
	}
	slices.SortFunc(r.services, func(a, b membership) int { return cmp.Compare(a.service.Value(), b.service.Value()) })
	sortIssues(issues)
	return r, issues
}

// sameEndpoints reports whether a and b (either nil) give the same endpoints to the same
// services.
func sameEndpoints(a, b *workloadRec) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.healthy == b.healthy && a.capacity == b.capacity && slices.Equal(a.ips, b.ips) &&
		slices.EqualFunc(a.services, b.services, func(x, y membership) bool {
			return x.service == y.service && slices.Equal(x.ports, y.ports)
		})
}

// targetPort is the port the workload takes the service's port p on: the workload's own
// mapping, else the Service's target port. 0 means it does not take it: the Service's target
// port is 0 when it names a port (a Kubernetes named targetPort) that only workloads resolve,
// and one that does not resolve it is not an endpoint for that port (as ztunnel does).
func (w *workloadRec) targetPort(service string, p portPair) uint16 {
	for _, m := range w.services {
		if m.service.Value() != service {
			continue
		}
		for _, q := range m.ports {
			if q.port == p.port && q.target != 0 {
				return q.target
			}
		}
		break
	}
	return p.target
}
