package workload

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// Result is a translation.
type Result struct {
	// Config is every frontend to program. The map is not modified after it is returned: a
	// later translation that changes something returns a new one.
	Config model.Config
	// Changed lists the frontends added, changed or removed since the State's previous
	// translation (for the first, every frontend), sorted.
	Changed []model.Key
	// Issues lists what was left out and why, sorted by resource.
	Issues []Issue

	state *State
}

// Identity is State.Identity of the State translated.
func (r *Result) Identity(ip netip.Addr) (WorkloadIdentity, bool) { return r.state.Identity(ip) }

// ServiceByVIP is State.ServiceByVIP of the State translated.
func (r *Result) ServiceByVIP(vip netip.Addr) (ServiceIdentity, bool) {
	return r.state.ServiceByVIP(vip)
}

// Translate translates a set of Address resources, keyed by resource name (a workload's
// uid, a service's "namespace/hostname"). Resources that State.Update refuses are reported as
// issues; the others are translated.
func Translate(addrs map[string]*workloadapi.Address, opts Options) *Result {
	s := NewState(opts)
	var refused []Issue
	for _, name := range slices.Sorted(maps.Keys(addrs)) {
		if err := s.Update(name, addrs[name]); err != nil {
			refused = append(refused, Issue{Resource: name, Reason: err.Error()})
		}
	}
	r := s.Translate()
	if len(refused) > 0 {
		r.Issues = append(r.Issues, refused...)
		sortIssues(r.Issues)
	}
	return r
}

// svcOut is what a translation made of one service.
type svcOut struct {
	keys    []model.Key // frontends in the config
	steered []steer     // those steered to the waypoint
	issues  []Issue
}

type steer struct{ frontend, to netip.AddrPort }

// Translate translates the services that changed since the last call (all of them the first
// time) and returns the whole config.
func (s *State) Translate() *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	type done struct {
		name string
		out  *svcOut
		svcs []model.Service
	}
	names := slices.Sorted(maps.Keys(s.dirty))
	clear(s.dirty)
	results := make([]done, 0, len(names))
	produced := map[model.Key]struct{}{}
	for _, n := range names {
		out, svcs := s.translateService(n)
		results = append(results, done{n, out, svcs})
		for _, svc := range svcs {
			produced[svc.Key] = struct{}{}
		}
	}
	// The config handed out is never changed: copy it on the first change.
	var next map[model.Key]model.Service
	var changed []model.Key
	write := func() {
		if next == nil {
			next = maps.Clone(s.cfg)
		}
	}
	// Frontends a service lost first: another one translated now may have taken them over.
	for _, d := range results {
		if old := s.out[d.name]; old != nil {
			s.steered -= len(old.steered)
			for _, k := range old.keys {
				if _, ok := produced[k]; !ok {
					write()
					delete(next, k)
					changed = append(changed, k)
				}
			}
		}
	}
	for _, d := range results {
		for _, svc := range d.svcs {
			if cur, ok := s.cfg[svc.Key]; !ok || !sameService(cur, svc) {
				write()
				next[svc.Key] = svc
				changed = append(changed, svc.Key)
			}
		}
		if d.out == nil {
			delete(s.out, d.name)
		} else {
			s.out[d.name] = d.out
			s.steered += len(d.out.steered)
		}
	}
	if next != nil {
		s.cfg = next
	}
	slices.SortFunc(changed, compareKeys)
	changed = slices.Compact(changed)
	return &Result{Config: model.Config{Services: s.cfg}, Changed: changed, Issues: s.issues(), state: s}
}

func sameService(x, y model.Service) bool {
	return x.Key == y.Key && x.Name == y.Name && x.Policy == y.Policy &&
		slices.EqualFunc(x.Priorities, y.Priorities, slices.Equal[[]model.Endpoint])
}

func (s *State) issues() []Issue {
	var out []Issue
	for _, is := range s.wIssues {
		out = append(out, is...)
	}
	for _, o := range s.out {
		out = append(out, o.issues...)
	}
	sortIssues(out)
	return out
}

func sortIssues(is []Issue) {
	slices.SortFunc(is, func(a, b Issue) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), a.Frontend.Compare(b.Frontend), cmp.Compare(a.Reason, b.Reason))
	})
}

// translateService translates one service: nil if it is gone.
func (s *State) translateService(name string) (*svcOut, []model.Service) {
	r := s.services[name]
	if r == nil {
		return nil, nil
	}
	out := &svcOut{issues: slices.Clone(r.issues)}
	var svcs []model.Service
	issue := func(k model.Key, format string, args ...any) {
		out.issues = append(out.issues, Issue{Resource: name, Frontend: netip.AddrPortFrom(k.VIP, k.Port), Reason: fmt.Sprintf(format, args...)})
	}
	for _, vip := range r.vips {
		var wp netip.Addr
		var unresolved string
		if r.waypoint != nil {
			wp, unresolved = s.resolveWaypoint(r, vip)
		}
		for _, p := range r.ports {
			k := model.Key{VIP: vip, Port: p.port, Proto: model.TCP}
			if owner, _ := s.frontends.owner(k); owner != name {
				issue(k, "frontend also belongs to service %s, which has it: not programmed", owner)
				continue
			}
			if unresolved != "" {
				issue(k, "%s: not programmed", unresolved)
				continue
			}
			svc := model.Service{Key: k, Name: name, Policy: model.Random}
			if r.waypoint != nil {
				// onehop steers the connection to the waypoint in plaintext, on the port the
				// waypoint gives (hbone_mtls_port) or else the service port. The lab's waypoints
				// take plaintext on each service port; a real Istio waypoint expects HBONE
				// (HTTP/2 CONNECT in mTLS) on 15008, which onehop does not speak.
				port := r.waypoint.port
				if port == 0 {
					port = p.port
				}
				to := netip.AddrPortFrom(wp, port)
				if w := s.services[r.waypoint.service]; w != nil {
					// A waypoint named by its Service (as istiod names them) is balanced over
					// the waypoint's pods right here: a connect() is rewritten once, so
					// steering to the waypoint's VIP would leave a second hop to kube-proxy.
					wpp := portPair{port, port}
					if i := slices.IndexFunc(w.ports, func(q portPair) bool { return q.port == port }); i >= 0 {
						wpp = w.ports[i]
					}
					if eps := s.endpoints(w, wpp, vip.Is4()); len(eps) > 0 {
						svc.Priorities = [][]model.Endpoint{eps}
					}
				} else {
					svc.Priorities = [][]model.Endpoint{{{Addr: to, Weight: 1}}}
				}
				out.steered = append(out.steered, steer{netip.AddrPortFrom(vip, p.port), to})
			} else if eps := s.endpoints(r, p, vip.Is4()); len(eps) > 0 {
				svc.Priorities = [][]model.Endpoint{eps}
			}
			// A service without endpoints is programmed empty (valid for the model): the kernel
			// refuses connections to it rather than leaving them to whatever was there before.
			if err := svc.Validate(); err != nil {
				issue(k, "%v: not programmed", err)
				continue
			}
			svcs = append(svcs, svc)
			out.keys = append(out.keys, k)
		}
	}
	return out, svcs
}

// resolveWaypoint finds the address of r's waypoint for a VIP: the waypoint's address, or the
// first VIP of the same family of the Service the waypoint names.
func (s *State) resolveWaypoint(r *serviceRec, vip netip.Addr) (netip.Addr, string) {
	g := r.waypoint
	family := "IPv4"
	if vip.Is6() {
		family = "IPv6"
	}
	switch {
	case g.invalid != "":
		return netip.Addr{}, g.invalid
	case g.service == r.name:
		return netip.Addr{}, "the service is its own waypoint"
	case g.service != "":
		w := s.services[g.service]
		if w == nil {
			return netip.Addr{}, fmt.Sprintf("waypoint service %s is unknown", g.service)
		}
		for _, v := range w.vips {
			if v.Is4() == vip.Is4() {
				return v, ""
			}
		}
		return netip.Addr{}, fmt.Sprintf("waypoint service %s has no %s VIP", g.service, family)
	case g.addr.Is4() != vip.Is4():
		return netip.Addr{}, fmt.Sprintf("waypoint address %s is not %s", g.addr, family)
	case slices.Contains(r.vips, g.addr):
		return netip.Addr{}, "the service is its own waypoint"
	}
	return g.addr, ""
}

// endpoints lists the endpoints of r's port p of one address family, sorted.
func (s *State) endpoints(r *serviceRec, p portPair, v4 bool) []model.Endpoint {
	var eps []model.Endpoint
	for wn := range s.members[r.name] {
		w := s.workloads[wn]
		if w == nil || w.capacity == 0 || !w.healthy && !r.allowAll {
			continue
		}
		t := w.targetPort(r.name, p)
		if t == 0 {
			continue
		}
		for _, ip := range w.ips {
			if ip.Is4() == v4 {
				eps = append(eps, model.Endpoint{Addr: netip.AddrPortFrom(ip, t), Weight: w.capacity})
			}
		}
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	// Two workloads at one address and port (host-network pods): one endpoint, both weights.
	out := eps[:0]
	for _, e := range eps {
		if n := len(out); n > 0 && out[n-1].Addr == e.Addr {
			out[n-1].Weight = min(out[n-1].Weight+e.Weight, model.MaxWeight)
			continue
		}
		out = append(out, e)
	}
	return out
}

// Frontend is one programmed frontend of a service.
type Frontend struct {
	Frontend  netip.AddrPort `json:"frontend"`
	Endpoints int            `json:"endpoints"`
	// Waypoint is where connections to the frontend are steered, if it is steered.
	Waypoint netip.AddrPort `json:"waypoint,omitzero"`
}

// ServiceStatus is what the last translation made of one Service resource.
type ServiceStatus struct {
	Name       string     `json:"name"` // namespace/hostname
	Headless   bool       `json:"headless,omitempty"`
	Programmed []Frontend `json:"programmed,omitempty"`
	// Waypoint: the service has a waypoint, and its programmed frontends are steered to it.
	Waypoint bool `json:"waypoint,omitempty"`
	// Issues: why frontends, or endpoints, were left out.
	Issues []Issue `json:"issues,omitempty"`
}

// Services reports, per Service resource translated, what was programmed and what was not.
func (s *State) Services() []ServiceStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ServiceStatus, 0, len(s.out))
	for _, name := range slices.Sorted(maps.Keys(s.out)) {
		o := s.out[name]
		st := ServiceStatus{Name: name, Issues: o.issues, Waypoint: len(o.steered) > 0}
		if r := s.services[name]; r != nil && len(r.vips) == 0 {
			st.Headless = true
		}
		for _, k := range o.keys {
			f := Frontend{Frontend: netip.AddrPortFrom(k.VIP, k.Port)}
			for _, eps := range s.cfg[k].Priorities {
				f.Endpoints += len(eps)
			}
			for _, t := range o.steered {
				if t.frontend == f.Frontend {
					f.Waypoint = t.to
				}
			}
			st.Programmed = append(st.Programmed, f)
		}
		out = append(out, st)
	}
	return out
}

// Summary counts what the last translation made.
type Summary struct {
	Services  int `json:"services"`  // Service resources
	Workloads int `json:"workloads"` // Workload resources
	Frontends int `json:"frontends"` // frontends programmed
	Empty     int `json:"empty"`     // of which have no endpoints
	Steered   int `json:"steered"`   // of which are steered to a waypoint
	Issues    int `json:"issues"`
}

// Summary counts what the last translation made, cheaply (no per-service lists).
func (s *State) Summary() Summary {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sum := Summary{Services: len(s.services), Workloads: len(s.workloads), Frontends: len(s.cfg), Steered: s.steered}
	for _, svc := range s.cfg {
		if len(svc.Priorities) == 0 {
			sum.Empty++
		}
	}
	for _, is := range s.wIssues {
		sum.Issues += len(is)
	}
	for _, o := range s.out {
		sum.Issues += len(o.issues)
	}
	return sum
}
