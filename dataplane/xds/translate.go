package xds

import (
	"cmp"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// Limits on what the agent accepts from a control plane, beyond the per-service limits of
// model.Validate. They bound the agent's memory and the kernel maps.
const (
	MaxServices = 100_000 // services in one config
	// MaxResourceBytes bounds the encoded size of one resource. istiod puts every service of a
	// port into one listener (a filter chain per VIP), about 250 bytes per service: 16 MiB holds
	// some 60,000 services on one port.
	MaxResourceBytes = 16 << 20
)

// State is the xDS resources the translation reads, each map keyed by resource name
// (Endpoints by ClusterLoadAssignment.cluster_name, i.e. the EDS service name).
type State struct {
	Listeners map[string]*Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*Cluster
	Endpoints map[string]*Assignment

	// Previous is the config applied last. A service whose endpoints (EDS) or route (RDS) have
	// not arrived yet keeps its Previous definition: an update never takes down a working
	// service while what it now depends on is still on its way.
	Previous model.Config

	// AcceptedListeners and AcceptedRoutes are the listeners and routes as they were before
	// the update being translated. A reference to a cluster missing from Clusters is an error
	// only where the update introduced it, in a listener or route that differs from its
	// accepted version. Elsewhere the cluster is pending like a warming one: control planes
	// remove a cluster before or after the listener using it, and the other half follows.
	AcceptedListeners map[string]*Listener
	AcceptedRoutes    map[string]*routev3.RouteConfiguration

	// AwaitingClusters makes every missing cluster pending. The client sets it until the
	// stream's first CDS response, which may come after the first listeners and routes.
	AwaitingClusters bool
}

// Listener is an LDS listener as the agent keeps it: the VIP:ports its chains serve and what
// each chain sends to, worked out once, rather than the decoded message. istiod sends a
// listener per TCP service VIP; at 10,000 services the decoded messages (and their filters'
// typed configs) were a third of the agent's heap. Immutable once made.
type Listener struct {
	Name   string
	Size   int    // encoded bytes
	hash   uint64 // of the encoded bytes: equal hashes, same listener
	fes    []frontend
	routed []frontend // chains whose VIPs are the IP domains of their routes' virtual hosts (key unset)
	err    error
	routes []string // the RDS names its chains use
}

// listenerSeed hashes listeners' bytes, the same for every stream, so that a listener accepted
// on one stream compares equal to the same listener on the next.
var listenerSeed = maphash.MakeSeed()

// NewListener translates l for State.Listeners.
func NewListener(l *listenerv3.Listener) *Listener {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	return newListener(l, b)
}

func newListener(l *listenerv3.Listener, wire []byte) *Listener {
	out := &Listener{Name: l.GetName(), Size: len(wire), hash: maphash.Bytes(listenerSeed, wire), routes: listenerRoutes(l)}
	out.fes, out.routed, out.err = frontends(out.Name, l)
	for i := range out.fes {
		out.fes[i].chain.l = out
	}
	for i := range out.routed {
		out.routed[i].chain.l = out
	}
	return out
}

// Assignment is an EDS ClusterLoadAssignment as the agent keeps it: its endpoints already
// translated, not the decoded message. A decoded assignment of 10 endpoints takes about 5 KB
// of heap against about 300 bytes on the wire; at 10,000 services those messages were half
// the agent's heap. Assignments are immutable once made.
type Assignment struct {
	Name   string // cluster_name
	Size   int    // encoded bytes
	levels [][]weighted
	err    error // why the endpoints cannot be programmed
}

// Cluster is a CDS cluster as the agent keeps it: what translation reads of it, worked out
// once, rather than the decoded message (about 1.5 KB of heap each). Immutable once made.
type Cluster struct {
	Name   string
	Size   int    // encoded bytes
	EDS    string // the EDS service name it takes its endpoints from; "" if not an EDS cluster
	policy model.Policy
	static [][]weighted // the inline endpoints of a STATIC or STRICT_DNS cluster
	err    error        // why it cannot be programmed
}

// NewCluster translates c for State.Clusters.
func NewCluster(c *clusterv3.Cluster) *Cluster {
	return newCluster(c, proto.Size(c))
}

func newCluster(c *clusterv3.Cluster, size int) *Cluster {
	out := &Cluster{Name: c.GetName(), Size: size}
	if c.GetClusterType() == nil && c.GetType() == clusterv3.Cluster_EDS {
		out.EDS = edsName(out.Name, c)
	}
	out.policy, out.err = lbPolicy(c)
	if out.err != nil {
		out.err = fmt.Errorf("cluster %q: %w", out.Name, out.err)
		return out
	}
	if ct := c.GetClusterType(); ct != nil {
		out.err = fmt.Errorf("cluster %q: custom cluster_type %q not supported by onehop", out.Name, ct.GetName())
		return out
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS:
		cla := c.GetLoadAssignment()
		if cla == nil {
			out.err = fmt.Errorf("cluster %q: %s cluster without load_assignment", out.Name, c.GetType())
		} else if out.static, out.err = endpoints(cla); out.err != nil {
			out.err = badEndpoints(out.Name, cla.GetClusterName(), out.err)
		}
	default:
		out.err = fmt.Errorf("cluster %q: type %s not supported by onehop (use EDS, STATIC or STRICT_DNS with IP addresses)", out.Name, c.GetType())
	}
	return out
}

func badEndpoints(cluster, cla string, err error) error {
	return fmt.Errorf("cluster %q: cluster_load_assignment %q: %w", cluster, cla, err)
}

// NewAssignment translates cla for State.Endpoints.
func NewAssignment(cla *endpointv3.ClusterLoadAssignment) *Assignment {
	return newAssignment(cla, proto.Size(cla))
}

func newAssignment(cla *endpointv3.ClusterLoadAssignment, size int) *Assignment {
	a := &Assignment{Name: cla.GetClusterName(), Size: size}
	a.levels, a.err = endpoints(cla)
	return a
}

// Translate turns the xDS state into the services the kernel balances. An error names the
// resource and the reason; the client NACKs the update that produced it (a *RejectedError
// comes with the config of every other service, which is applied).
//
// A listener bound to an IP gives one service per VIP:port. An Istio-style port listener
// (0.0.0.0 or ::) gives one service per filter chain prefix range of a full-length (/32, /128)
// destination; its chains without prefix ranges give, when they are HTTP, one service per IP
// that their route configuration's virtual host domains name (istiod's HTTP ports), and are
// passthrough otherwise. The chain's tcp_proxy or http_connection_manager names the clusters.
func Translate(s *State) (model.Config, error) {
	return new(Translator).Translate(s)
}

// Translator translates like Translate, remembering per-resource results between calls so
// that a state that differs in a few resources costs a walk over the maps plus the services
// those resources feed. Results are remembered by resource name together with the message
// they came from, and reused only for that same message: the client hands over the same
// message for a resource that did not change, and messages are never modified once decoded.
// The zero value is ready to use; a Translator is not safe for concurrent use.
type Translator struct {
	m   *memo
	idx *index  // of the last full Translate that succeeded
	is  *issues // of the last translation
	// Assembled counts services built from their resources rather than taken from the memo.
	Assembled int
}

type memo struct {
	routeSizes map[string]sized // (listeners, clusters and assignments carry their size)
	routes     map[string]*routeMemo
	clusters   map[string]*clusterResult
	services   map[model.Key]*serviceResult
}

type sized struct {
	msg proto.Message
	n   int
}

type routeMemo struct {
	rc    *routev3.RouteConfiguration
	byKey map[model.Key]routeResult // per VIP:port: its virtual host's targets
	vips  map[uint16][]netip.Addr   // per listener port: the VIPs its virtual hosts' domains name
}

type routeResult struct {
	ts  []target
	l7  string // why the virtual host needs a waypoint (routes by path or header elsewhere); "" if not
	err error
}

// serviceResult is a service as assembled from its chain and clusters.
type serviceResult struct {
	chain    chainID
	targets  []target
	backends []*clusterResult
	svc      model.Service
	st       status
}

func (tr *Translator) memo() *memo {
	if tr.m == nil {
		tr.m = &memo{routeSizes: map[string]sized{}, routes: map[string]*routeMemo{},
			clusters: map[string]*clusterResult{}, services: map[model.Key]*serviceResult{}}
	}
	return tr.m
}

// sweep drops what the state no longer names, once the memo has more entries than the state.
func sweep[K comparable, V, W any](m map[K]V, live map[K]W) {
	if len(m) > len(live) {
		for k := range m {
			if _, ok := live[k]; !ok {
				delete(m, k)
			}
		}
	}
}

// index says which services an endpoint assignment feeds, for UpdateEndpoints.
type index struct {
	fes       []frontend          // every frontend in translation order
	byCluster map[string][]int    // cluster name -> positions in fes of the services sending to it
	byEDS     map[string][]string // EDS service name -> the clusters taking their endpoints from it
}

// Report is what the last Translate or UpdateEndpoints could not do as asked.
func (tr *Translator) Report() Report {
	if tr.is == nil {
		return newIssues().report()
	}
	return tr.is.report()
}

// Translate is the package's Translate, reusing what earlier calls translated.
//
// One service that cannot be programmed does not stop the others: it is left out (or kept as
// it was, when s.Previous has it), reported in Report, and Translate returns the config of
// everything else together with a *RejectedError; the client applies that config and NACKs
// the update, as Envoy accepts the valid part of a partly invalid update. Other errors (sizes,
// too many services) reject the whole state: the config is then empty.
func (tr *Translator) Translate(s *State) (model.Config, error) {
	m := tr.memo()
	tr.idx = nil
	tr.is = newIssues()
	idx := &index{byCluster: map[string][]int{}, byEDS: map[string][]string{}}
	chosen := map[model.Key]int{} // the frontend serving each VIP:port, by position in fes
	defer func() {
		sweep(m.routeSizes, s.Routes)
		sweep(m.routes, s.Routes)
		sweep(m.clusters, s.Clusters)
		sweep(m.services, chosen)
	}()
	if err := tr.checkSizes(s); err != nil {
		return model.Config{}, err
	}
	t := translator{s: s, tr: tr, clusters: map[string]*clusterResult{}, settled: map[origin]bool{},
		used: func(c string) { idx.byCluster[c] = append(idx.byCluster[c], len(idx.fes)) }}
	names := slices.Sorted(maps.Keys(s.Listeners))
	var fes []frontend
	for _, name := range names {
		l := s.Listeners[name]
		if l.err != nil {
			tr.is.resources = append(tr.is.resources, Issue{Resource: fmt.Sprintf("listener %q", name), Reason: l.err.Error()})
			continue
		}
		fes = append(fes, l.fes...)
	}
	// VIPs named only by route domains come after every VIP a chain names itself: a chain
	// for the VIP (Istio's VIP-bound listeners) is the more specific match, as in Envoy.
	for _, name := range names {
		for _, fe := range s.Listeners[name].routed {
			fes = append(fes, t.routedFrontends(fe)...)
		}
	}
	// One chain per VIP:port: the best ranked (see frontend.rank). Chains of equal rank are
	// duplicates: the first (in listener name order) serves, the others are reported.
	var order []model.Key
	for i, fe := range fes {
		j, ok := chosen[fe.key]
		switch {
		case !ok:
			chosen[fe.key] = i
			order = append(order, fe.key)
		case fe.rank < fes[j].rank:
			chosen[fe.key] = i
		case fe.rank == fes[j].rank:
			tr.is.resources = append(tr.is.resources, Issue{Service: addrPort(fe.key), Resource: fe.where,
				Reason: fmt.Sprintf("%s and %s both serve %s: onehop needs exactly one listener chain per VIP:port and uses the first", fes[j].where, fe.where, fe.key)})
		}
	}
	cfg := model.Config{Services: make(map[model.Key]model.Service, len(m.services))}
	for _, k := range order {
		fe := fes[chosen[k]]
		t.put(cfg, fe)
		idx.fes = append(idx.fes, fe)
		if len(cfg.Services) > MaxServices {
			return model.Config{}, fmt.Errorf("more than %d services in total (at %s): onehop does not program more", MaxServices, fe.where)
		}
	}
	for name, c := range s.Clusters {
		if c.EDS != "" {
			idx.byEDS[c.EDS] = append(idx.byEDS[c.EDS], name)
		}
	}
	tr.idx = idx
	return cfg, tr.is.err(nil, len(order))
}

func addrPort(k model.Key) string { return netip.AddrPortFrom(k.VIP, k.Port).String() }

// routedFrontends gives a chain whose VIPs are the IP domains of its route configuration's
// virtual hosts (Istio's 0.0.0.0_<port> listeners for HTTP ports) a frontend per VIP. A route
// configuration that has not arrived gives none yet.
func (t *translator) routedFrontends(fe frontend) []frontend {
	rc := fe.h.inline
	where := fe.where
	if fe.h.rds {
		if rc = t.s.Routes[fe.h.rdsName]; rc == nil {
			return nil
		}
		where = fmt.Sprintf("%s route_configuration %q", fe.where, fe.h.rdsName)
	}
	if rc == nil {
		return nil
	}
	rm := t.tr.routeMemo(rc)
	vips, ok := rm.vips[fe.key.Port]
	if !ok {
		vips = domainVIPs(rc, fe.key.Port)
		rm.vips[fe.key.Port] = vips
	}
	out := make([]frontend, 0, len(vips))
	for _, vip := range vips {
		f := fe
		f.key = model.Key{VIP: vip, Port: fe.key.Port, Proto: model.TCP}
		f.where = where
		out = append(out, f)
	}
	return out
}

// domainVIPs lists the IPs the virtual hosts' domains name, bare or with the given port
// ("10.96.0.5", "10.96.0.5:8080", "[fd00::5]:8080"), once each. "*" and host names are not
// addresses a connect() can be matched on.
func domainVIPs(rc *routev3.RouteConfiguration, port uint16) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(d, "["), "]"))
			if err != nil {
				ap, err := netip.ParseAddrPort(d)
				if err != nil || ap.Port() != port {
					continue
				}
				a = ap.Addr()
			}
			if a.Zone() != "" || a.IsUnspecified() || seen[a] {
				continue
			}
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// put translates the frontend's service into cfg, or takes it out, and records its issues.
func (t *translator) put(cfg model.Config, fe frontend) {
	t.tr.is.clear(fe.key)
	svc, st, l7, err := t.service(fe)
	if err != nil || st == pending {
		// Not (yet) programmable: keep what was programmed, if anything. A service that has
		// no endpoints is not pending: it is programmed empty, so that connect()s to it fail
		// at once instead of going to endpoints that are gone.
		prev, ok := t.s.Previous.Services[fe.key]
		if ok {
			cfg.Services[fe.key] = prev
		} else {
			delete(cfg.Services, fe.key)
		}
		if err != nil {
			t.tr.is.rejected[fe.key] = Issue{Service: addrPort(fe.key), Resource: fe.where, Reason: err.Error(), Kept: ok}
		}
		return
	}
	cfg.Services[fe.key] = svc
	if l7 != "" {
		t.tr.is.waypoint[fe.key] = Issue{Service: addrPort(fe.key), Resource: fe.where, Reason: l7}
	}
}

// UpdateEndpoints translates s, which differs from the state of the last successful
// Translate only in the endpoint assignments named in changed, by re-translating just the
// services those feed. s.Previous must be what that Translate returned (or what an
// UpdateEndpoints since returned for the state before s). It returns the config and the
// services that differ from s.Previous. ok is false when it cannot be sure to give what
// Translate would (no index, or a limit is hit): call Translate instead. A *RejectedError
// names those of the re-translated services that could not be programmed; cfg is still valid.
func (tr *Translator) UpdateEndpoints(s *State, changed []string) (cfg model.Config, diff []model.Key, ok bool, err error) {
	idx := tr.idx
	if idx == nil {
		return model.Config{}, nil, false, nil
	}
	var at []int
	for _, n := range changed {
		if a := s.Endpoints[n]; a != nil && a.Size > MaxResourceBytes {
			return model.Config{}, nil, false, nil // Translate names the largest one
		}
		for _, c := range idx.byEDS[n] {
			at = append(at, idx.byCluster[c]...)
		}
	}
	// In translation order, so the error is the one Translate would give.
	slices.Sort(at)
	at = slices.Compact(at)
	t := translator{s: s, tr: tr, clusters: map[string]*clusterResult{}, settled: map[origin]bool{}}
	cfg = model.Config{Services: maps.Clone(s.Previous.Services)}
	if cfg.Services == nil {
		cfg.Services = map[model.Key]model.Service{}
	}
	if tr.is == nil {
		tr.is = newIssues()
	}
	tr.is = tr.is.clone()
	keys := make([]model.Key, 0, len(at))
	for _, i := range at {
		fe := idx.fes[i]
		t.put(cfg, fe)
		keys = append(keys, fe.key)
		old, had := s.Previous.Services[fe.key]
		svc, has := cfg.Services[fe.key]
		if had != has || (has && !sameService(old, svc)) {
			diff = append(diff, fe.key)
		}
	}
	if len(cfg.Services) > MaxServices {
		return model.Config{}, nil, false, nil // Translate names the listener
	}
	return cfg, diff, true, tr.is.err(keys, len(idx.fes))
}

func sameService(x, y model.Service) bool {
	return x.Key == y.Key && x.Name == y.Name && x.Policy == y.Policy &&
		slices.EqualFunc(x.Priorities, y.Priorities, slices.Equal[[]model.Endpoint])
}

func (tr *Translator) checkSizes(s *State) error {
	return errors.Join(
		checkMeasured("listener", s.Listeners),
		checkSize(tr.memo().routeSizes, "route_configuration", s.Routes),
		checkMeasured("cluster", s.Clusters),
		checkMeasured("cluster_load_assignment", s.Endpoints),
	)
}

func (l *Listener) encodedSize() int   { return l.Size }
func (c *Cluster) encodedSize() int    { return c.Size }
func (a *Assignment) encodedSize() int { return a.Size }

// checkMeasured is checkSize for resources kept with their size.
func checkMeasured[M interface{ encodedSize() int }](kind string, m map[string]M) error {
	var over []string
	for name, r := range m {
		if r.encodedSize() > MaxResourceBytes {
			over = append(over, name)
		}
	}
	if len(over) == 0 {
		return nil
	}
	name := slices.Min(over)
	return tooBig(kind, name, m[name].encodedSize())
}

func tooBig(kind, name string, n int) error {
	return fmt.Errorf("%s %q is %d bytes encoded, more than the %d onehop accepts", kind, name, n, MaxResourceBytes)
}

func checkSize[M proto.Message](memo map[string]sized, kind string, m map[string]M) error {
	var over []string
	for name, r := range m {
		// Encoding size is a walk over the whole message: only new messages are measured.
		e, ok := memo[name]
		if !ok || e.msg != proto.Message(r) {
			e = sized{r, proto.Size(r)}
			memo[name] = e
		}
		if e.n > MaxResourceBytes {
			over = append(over, name)
		}
	}
	if len(over) == 0 {
		return nil
	}
	name := slices.Min(over) // the same NACK message for the same state
	return tooBig(kind, name, proto.Size(m[name]))
}

func (tr *Translator) routeMemo(rc *routev3.RouteConfiguration) *routeMemo {
	rm := tr.memo().routes[rc.GetName()]
	if rm == nil || rm.rc != rc {
		rm = &routeMemo{rc: rc, byKey: map[model.Key]routeResult{}, vips: map[uint16][]netip.Addr{}}
		tr.m.routes[rc.GetName()] = rm
	}
	return rm
}

func (tr *Translator) routeTargets(rc *routev3.RouteConfiguration, key model.Key) ([]target, string, error) {
	rm := tr.routeMemo(rc)
	r, ok := rm.byKey[key]
	if !ok {
		r.ts, r.l7, r.err = routeTargets(rc, key)
		rm.byKey[key] = r
	}
	return r.ts, r.l7, r.err
}

// frontend is one VIP:port served by a listener filter chain.
type frontend struct {
	key      model.Key
	listener string
	where    string // `listener "x" chain "y"`, for errors
	chain    chainID
	// rank orders the chains that serve one VIP:port, the lowest serving it: a chain without
	// further match criteria (0), then chains that also match on what connect() cannot see
	// (transport or application protocol, SNI, source: 1 per criterion; Istio splits a
	// protocol-sniffed port into such chains), then a listener's default chain, then a VIP
	// taken from a route's virtual host domains.
	rank int
	// What the chain's network filter sends to, worked out once for all its VIPs: the
	// clusters of a tcp_proxy, or the http_connection_manager whose routes name them.
	fixed []target
	h     *httpRoutes
	ferr  error
}

// chainID names one filter chain of one listener, for the memo of assembled services.
type chainID struct {
	l *Listener
	i int
}

// httpRoutes is what an http_connection_manager says of its routes: an RDS name, or an inline
// route configuration.
type httpRoutes struct {
	rds     bool
	rdsName string
	inline  *routev3.RouteConfiguration
}

func newHTTPRoutes(h *hcmv3.HttpConnectionManager) *httpRoutes {
	if rds := h.GetRds(); rds != nil {
		return &httpRoutes{rds: true, rdsName: rds.GetRouteConfigName()}
	}
	return &httpRoutes{inline: h.GetRouteConfig()}
}

// Ranks of frontends beyond the match criteria count (see frontend.rank).
const (
	rankDefaultChain = 100
	rankRouteDomain  = 200
)

// frontends returns the VIP:ports the listener's chains serve, and the chains whose VIPs come
// from their routes' virtual host domains (key.Port set, VIP not yet).
func frontends(name string, l *listenerv3.Listener) (fes, routed []frontend, err error) {
	where := fmt.Sprintf("listener %q", name)
	// API and internal listeners, and pipe addresses, are nothing a connect() can target.
	// Only the primary address is translated; additional_addresses are not used by onehop.
	sa := l.GetAddress().GetSocketAddress()
	if l.GetApiListener() != nil || l.GetInternalListener() != nil || sa == nil {
		return nil, nil, nil
	}
	if sa.GetProtocol() == corev3.SocketAddress_UDP || l.GetUdpListenerConfig() != nil {
		return nil, nil, fmt.Errorf("%s: UDP services are not supported by onehop", where)
	}
	ip, err := parseIP(sa.GetAddress())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: address: %w", where, err)
	}
	port, err := checkPort(sa.GetPortValue())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", where, err)
	}
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(slices.Clip(chains), d)
	}
	var out []frontend
	for i, fc := range chains {
		isDefault := fc == l.GetDefaultFilterChain()
		cw := fmt.Sprintf("%s chain %q", where, fc.GetName())
		if fc.GetName() == "" {
			cw = fmt.Sprintf("%s chain #%d", where, i)
		}
		if isDefault {
			cw = where + " default chain"
		}
		m := fc.GetFilterChainMatch()
		rank := criteria(m)
		if isDefault {
			rank = rankDefaultChain
		}
		p := port
		if dp := m.GetDestinationPort(); dp != nil {
			if p, err = checkPort(dp.GetValue()); err != nil {
				return nil, nil, fmt.Errorf("%s: destination_port: %w", cw, err)
			}
		}
		var vips []netip.Addr
		if len(m.GetPrefixRanges()) == 0 {
			if ip.IsUnspecified() {
				// A port-wide chain: HTTP routes name their VIPs in virtual host domains
				// (Istio's 0.0.0.0_<port> listeners); anything else is passthrough.
				if _, h, err := networkFilter(fc); err == nil && h != nil {
					routed = append(routed, frontend{key: model.Key{Port: p}, listener: name, where: cw, chain: chainID{i: i}, h: newHTTPRoutes(h), rank: rankRouteDomain})
				}
				continue
			}
			vips = []netip.Addr{ip}
		}
		for _, r := range m.GetPrefixRanges() {
			a, err := parseIP(r.GetAddressPrefix())
			if err != nil {
				return nil, nil, fmt.Errorf("%s: prefix range: %w", cw, err)
			}
			// Only a full-length prefix is a VIP; the kernel matches exact VIPs, not ranges.
			// On a listener bound to one IP, other destinations never reach the chain.
			if r.GetPrefixLen().GetValue() != uint32(a.BitLen()) || (!ip.IsUnspecified() && a != ip) {
				continue
			}
			vips = append(vips, a)
		}
		var fixed []target
		var h *httpRoutes
		var ferr error
		if len(vips) > 0 {
			tp, hcm, err := networkFilter(fc)
			switch {
			case err != nil:
				ferr = err
			case tp != nil:
				fixed, ferr = tcpProxyTargets(tp)
			default:
				h = newHTTPRoutes(hcm)
			}
		}
		for _, vip := range vips {
			key := model.Key{VIP: vip, Port: p, Proto: model.TCP}
			out = append(out, frontend{key: key, listener: name, where: cw, chain: chainID{i: i}, fixed: fixed, h: h, ferr: ferr, rank: rank})
		}
	}
	return out, routed, nil
}

// criteria counts the match criteria of a chain beyond destination address and port: those
// choose between chains on what a connect() does not show (TLS, ALPN, SNI, the source).
func criteria(m *listenerv3.FilterChainMatch) int {
	n := 0
	for _, set := range []bool{m.GetTransportProtocol() != "", len(m.GetApplicationProtocols()) > 0,
		len(m.GetServerNames()) > 0, len(m.GetSourcePrefixRanges()) > 0, len(m.GetDirectSourcePrefixRanges()) > 0,
		len(m.GetSourcePorts()) > 0, m.GetSourceType() != listenerv3.FilterChainMatch_ANY} {
		if set {
			n++
		}
	}
	return n
}

func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not a valid IP (onehop does not resolve names)", s)
	}
	return a, nil
}

func checkPort(p uint32) (uint16, error) {
	if p == 0 || p > math.MaxUint16 {
		return 0, fmt.Errorf("port %d is not in 1..65535 (named ports are not supported)", p)
	}
	return uint16(p), nil
}

// networkFilter returns the chain's tcp_proxy or http_connection_manager, whichever comes first.
func networkFilter(fc *listenerv3.FilterChain) (*tcpproxyv3.TcpProxy, *hcmv3.HttpConnectionManager, error) {
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs((*tcpproxyv3.TcpProxy)(nil)):
			tp := &tcpproxyv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil {
				return nil, nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
			}
			return tp, nil, nil
		case tc.MessageIs((*hcmv3.HttpConnectionManager)(nil)):
			h := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(h); err != nil {
				return nil, nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
			}
			return nil, h, nil
		}
	}
	return nil, nil, errors.New("no tcp_proxy or http_connection_manager network filter (onehop forwards only these)")
}

// routeNames returns the RDS names the listeners reference, for the client's subscription.
// Chains that do not parse are skipped here: Translate reports them.
func routeNames(ls map[string]*Listener) []string {
	set := map[string]bool{}
	for _, l := range ls {
		for _, n := range l.routes {
			set[n] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func listenerRoutes(l *listenerv3.Listener) []string {
	var out []string
	for _, fc := range append(slices.Clip(l.GetFilterChains()), l.GetDefaultFilterChain()) {
		if _, h, err := networkFilter(fc); err == nil {
			if n := h.GetRds().GetRouteConfigName(); n != "" && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// endpointNames returns the EDS names of the EDS clusters, for the client's subscription.
func endpointNames(cs map[string]*Cluster) []string {
	set := map[string]bool{}
	for _, c := range cs {
		if c.EDS != "" {
			set[c.EDS] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func edsName(name string, c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return name
}

type status int

const (
	ready   status = iota
	pending        // waiting for EDS, RDS or CDS
)

type translator struct {
	s        *State
	tr       *Translator
	clusters map[string]*clusterResult // memo: many services share a cluster
	used     func(cluster string)      // told each cluster a service sends to (nil: not told)
	settled  map[origin]bool           // memo: resources unchanged from their accepted version
}

// origin is the resource that names a service's clusters: a listener (tcp_proxy or inline
// route) or a route configuration (RDS).
type origin struct {
	route bool
	name  string
}

// unchanged reports whether the update being translated left o as it was accepted.
func (t *translator) unchanged(o origin) bool {
	if u, ok := t.settled[o]; ok {
		return u
	}
	var u bool
	if o.route {
		prev, ok := t.s.AcceptedRoutes[o.name]
		u = ok && proto.Equal(prev, t.s.Routes[o.name])
	} else {
		prev, ok := t.s.AcceptedListeners[o.name]
		cur := t.s.Listeners[o.name]
		u = ok && cur != nil && (prev == cur || prev.hash == cur.hash && prev.Size == cur.Size)
	}
	t.settled[o] = u
	return u
}

// target is one cluster a service sends a share of its connections to.
type target struct {
	cluster string
	weight  uint64
}

func (t *translator) service(fe frontend) (model.Service, status, string, error) {
	targets, from, l7, st, err := t.targets(fe)
	if err != nil || st != ready {
		return model.Service{}, st, "", wrap(fe.where, err)
	}
	backends := make([]*clusterResult, len(targets))
	if t.used != nil {
		for _, tg := range targets {
			t.used(tg.cluster)
		}
	}
	st = ready
	for i, tg := range targets {
		b := t.cluster(tg.cluster)
		switch {
		case b.err != nil:
			return model.Service{}, 0, "", fmt.Errorf("%s: %w", fe.where, b.err)
		case b.missing && !t.s.AwaitingClusters && !t.unchanged(from):
			return model.Service{}, 0, "", fmt.Errorf("%s: cluster %q not found in CDS (unknown cluster reference)", fe.where, tg.cluster)
		case b.missing || b.pending:
			st = pending
		}
		backends[i] = b
	}
	if st == pending {
		return model.Service{}, pending, "", nil
	}
	if r, ok := t.tr.m.services[fe.key]; ok &&
		r.chain == fe.chain && slices.Equal(r.targets, targets) && slices.Equal(r.backends, backends) {
		return r.svc, r.st, l7, nil
	}
	svc, st, err := assemble(fe, targets, backends)
	if err == nil {
		t.tr.Assembled++
		t.tr.m.services[fe.key] = &serviceResult{chain: fe.chain, targets: targets, backends: backends, svc: svc, st: st}
	}
	return svc, st, l7, err
}

// assemble builds the service from its clusters' endpoints.
func assemble(fe frontend, targets []target, backends []*clusterResult) (model.Service, status, error) {
	svc := model.Service{Key: fe.key, Name: targets[0].cluster, Policy: backends[0].policy}
	if len(targets) > 1 {
		svc.Name = fe.listener
	}
	for _, b := range backends[1:] {
		if b.policy != svc.Policy {
			// One service has one policy in the kernel; a mix of policies has no common
			// meaning, and random is the one that keeps the weighted split unbiased.
			svc.Policy = model.Random
		}
	}
	// A connect() is steered within its address family: a dual-stack cluster serves its
	// IPv4 endpoints to the IPv4 VIP and its IPv6 ones to the IPv6 VIP.
	levels := make([][][]weighted, len(backends))
	for i, b := range backends {
		for _, l := range b.levels {
			l = slices.DeleteFunc(slices.Clone(l), func(e weighted) bool { return e.addr.Addr().Is4() != fe.key.VIP.Is4() })
			if len(l) > 0 {
				levels[i] = append(levels[i], l)
			}
		}
	}
	// Weighted clusters at L4 are one service over the union of their endpoints, each
	// endpoint weighted by its cluster's share. Levels are merged by rank (each cluster's
	// empty levels dropped), so a cluster failing over to its next priority keeps its share
	// instead of handing it to the others.
	for level := 0; ; level++ {
		var parts []part
		for i := range backends {
			if level < len(levels[i]) {
				parts = append(parts, part{cluster: targets[i].cluster, weight: targets[i].weight, eps: levels[i][level]})
			}
		}
		if len(parts) == 0 {
			break
		}
		eps, err := mix(parts)
		if err != nil {
			return model.Service{}, 0, fmt.Errorf("%s: %w", fe.where, err)
		}
		svc.Priorities = append(svc.Priorities, eps)
	}
	// No healthy endpoint at any level: the service is programmed empty, and the kernel
	// refuses connect()s to it, as kube-proxy's REJECT rule does.
	if err := svc.Validate(); err != nil {
		return model.Service{}, 0, fmt.Errorf("%s: %w", fe.where, err)
	}
	return svc, ready, nil
}

func wrap(where string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", where, err)
}

// targets returns the clusters the chain sends to, the resource that names them, and why the
// service needs a waypoint ("" if it does not).
func (t *translator) targets(fe frontend) ([]target, origin, string, status, error) {
	from := origin{name: fe.listener}
	h, err := fe.h, fe.ferr
	if err != nil {
		return nil, from, "", 0, err
	}
	if fe.fixed != nil {
		return fe.fixed, from, "", ready, nil
	}
	rc := h.inline
	if h.rds {
		name := h.rdsName
		if name == "" {
			return nil, from, "", 0, errors.New("http_connection_manager: rds has no route_config_name")
		}
		if rc = t.s.Routes[name]; rc == nil {
			return nil, from, "", pending, nil
		}
		from = origin{route: true, name: name}
	} else if rc == nil {
		return nil, from, "", 0, errors.New("http_connection_manager: neither route_config nor rds (scoped routes are not supported)")
	}
	ts, l7, err := t.tr.routeTargets(rc, fe.key)
	if err != nil {
		return nil, from, "", 0, fmt.Errorf("route_configuration %q: %w", rc.GetName(), err)
	}
	return ts, from, l7, ready, nil
}

func tcpProxyTargets(tp *tcpproxyv3.TcpProxy) ([]target, error) {
	if c := tp.GetCluster(); c != "" {
		return []target{{c, 1}}, nil
	}
	wc := tp.GetWeightedClusters().GetClusters()
	if len(wc) == 0 {
		return nil, errors.New("tcp_proxy names no cluster (on-demand clusters are not supported)")
	}
	ts := make([]target, len(wc))
	for i, c := range wc {
		ts[i] = target{c.GetName(), uint64(c.GetWeight())}
	}
	return checkWeights(ts)
}

// routeTargets takes the catch-all route of the virtual host serving the VIP:port. connect()
// sees no Host header, so the virtual host is the one whose domains name the destination as a
// client addressing the VIP would (Istio lists "VIP" and "VIP:port" in every service's virtual
// host of a port-wide route configuration), else a "*" one, else the only one. Paths and other
// headers are left to the waypoint; other routes are ignored here.
//
// When other routes of the virtual host (by path, header, ...) send to other clusters than the
// catch-all, connect() cannot honour them: the service is balanced by its catch-all route and
// l7 says why it needs a waypoint. A virtual host with no catch-all route is an error: only a
// waypoint can route it.
func routeTargets(rc *routev3.RouteConfiguration, key model.Key) (ts []target, l7 string, err error) {
	vhs := rc.GetVirtualHosts()
	if len(vhs) == 0 {
		return nil, "", errors.New("no virtual hosts (VHDS is not supported)")
	}
	vh := virtualHostFor(vhs, key)
	if vh == nil {
		return nil, "", fmt.Errorf("no virtual host for %s among %d (list the VIP or VIP:port in its domains, or add a \"*\" one)", addrPort(key), len(vhs))
	}
	i := slices.IndexFunc(vh.GetRoutes(), func(r *routev3.Route) bool { return catchAll(r.GetMatch()) })
	if i < 0 {
		return nil, "", fmt.Errorf("virtual host %q has no catch-all route (prefix \"/\" without other matchers): its routes need an L7 waypoint", vh.GetName())
	}
	r := vh.GetRoutes()[i]
	if ts, err = actionTargets(r); err != nil {
		return nil, "", fmt.Errorf("virtual host %q %w", vh.GetName(), err)
	}
	var others []string
	for _, o := range vh.GetRoutes()[:i] { // routes after the catch-all are never reached
		ots, err := actionTargets(o)
		if err != nil || !slices.Equal(ots, ts) {
			others = append(others, strconv.Quote(cmp.Or(o.GetName(), fmt.Sprintf("#%d", slices.Index(vh.GetRoutes(), o)))))
		}
	}
	if len(others) > 0 {
		l7 = fmt.Sprintf("virtual host %q: routes %s match on path or headers and go elsewhere than the catch-all route; at connect() every connection follows the catch-all (give the service a waypoint for L7 routing)", vh.GetName(), strings.Join(others, ", "))
	}
	return ts, l7, nil
}

// actionTargets returns the clusters a route sends to.
func actionTargets(r *routev3.Route) ([]target, error) {
	a := r.GetRoute()
	if a == nil {
		return nil, fmt.Errorf("route %q: not a route to a cluster (redirects and direct responses have no L4 equivalent)", r.GetName())
	}
	if c := a.GetCluster(); c != "" {
		return []target{{c, 1}}, nil
	}
	wc := a.GetWeightedClusters().GetClusters()
	if len(wc) == 0 {
		return nil, fmt.Errorf("route %q: names no cluster (cluster_header and cluster plugins are not supported)", r.GetName())
	}
	ts := make([]target, len(wc))
	for i, c := range wc {
		if c.GetName() == "" {
			return nil, fmt.Errorf("route %q: weighted cluster without a name (cluster_header is not supported)", r.GetName())
		}
		ts[i] = target{c.GetName(), uint64(c.GetWeight().GetValue())}
	}
	ts, err := checkWeights(ts)
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", r.GetName(), err)
	}
	return ts, nil
}

func virtualHostFor(vhs []*routev3.VirtualHost, key model.Key) *routev3.VirtualHost {
	ap := addrPort(key)
	host := key.VIP.String()
	if key.VIP.Is6() {
		host = "[" + host + "]"
	}
	var wildcard *routev3.VirtualHost
	for _, vh := range vhs {
		for _, d := range vh.GetDomains() {
			switch d {
			case ap, host, key.VIP.String():
				return vh
			case "*":
				wildcard = cmp.Or(wildcard, vh)
			}
		}
	}
	if wildcard == nil && len(vhs) == 1 {
		return vhs[0]
	}
	return wildcard
}

func catchAll(m *routev3.RouteMatch) bool {
	p, ok := m.GetPathSpecifier().(*routev3.RouteMatch_Prefix)
	return ok && (p.Prefix == "" || p.Prefix == "/") &&
		len(m.GetHeaders()) == 0 && len(m.GetQueryParameters()) == 0 && len(m.GetCookies()) == 0 &&
		len(m.GetDynamicMetadata()) == 0 && len(m.GetFilterState()) == 0 &&
		m.GetRuntimeFraction() == nil && m.GetGrpc() == nil && m.GetTlsContext() == nil
}

// checkWeights validates weighted clusters and merges repeated names.
func checkWeights(ts []target) ([]target, error) {
	var out []target
	var total uint64
	for _, t := range ts {
		if t.weight == 0 {
			return nil, fmt.Errorf("weighted cluster %q has zero weight", t.cluster)
		}
		total += t.weight
		if total > math.MaxUint32 {
			return nil, fmt.Errorf("weighted cluster weights overflow uint32 (at cluster %q)", t.cluster)
		}
		if i := slices.IndexFunc(out, func(o target) bool { return o.cluster == t.cluster }); i >= 0 {
			out[i].weight += t.weight
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

// clusterResult is one cluster, translated once per cluster and endpoint assignment message.
type clusterResult struct {
	c       *Cluster
	cla     *Assignment // the EDS one, nil for others
	policy  model.Policy
	levels  [][]weighted // healthy endpoints by priority, empty levels dropped
	missing bool         // not in CDS: an error or pending, depending on who names it
	pending bool         // EDS not arrived yet
	err     error
}

type weighted struct {
	addr netip.AddrPort
	w    uint64
}

func (t *translator) cluster(name string) *clusterResult {
	if r, ok := t.clusters[name]; ok {
		return r
	}
	c, ok := t.s.Clusters[name]
	if !ok {
		r := &clusterResult{missing: true}
		t.clusters[name] = r
		return r
	}
	var cla *Assignment
	if c.EDS != "" {
		cla = t.s.Endpoints[c.EDS]
	}
	r, ok := t.tr.m.clusters[name]
	if !ok || r.c != c || r.cla != cla {
		v := translateCluster(c, cla)
		v.c, v.cla = c, cla
		r = &v
		t.tr.m.clusters[name] = r
	}
	t.clusters[name] = r
	return r
}

func translateCluster(c *Cluster, eds *Assignment) clusterResult {
	switch {
	case c.err != nil:
		return clusterResult{err: c.err}
	case c.EDS == "":
		return clusterResult{policy: c.policy, levels: c.static}
	case eds == nil:
		return clusterResult{pending: true} // warming: EDS not arrived yet
	case eds.err != nil:
		return clusterResult{err: badEndpoints(c.Name, eds.Name, eds.err)}
	}
	return clusterResult{policy: c.policy, levels: eds.levels}
}

// Typed load balancing policies onehop can honour, by the type URL of their config.
var typedPolicies = map[string]model.Policy{
	"type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":     model.RoundRobin,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random":              model.Random,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest": model.Random,
}

// lbPolicy maps the cluster's policy. Least-request becomes random: the kernel picks at
// connect() time with no per-endpoint request or connection counts to compare, and random
// is what least-request degrades to when counts are equal.
func lbPolicy(c *clusterv3.Cluster) (model.Policy, error) {
	if lp := c.GetLoadBalancingPolicy(); lp != nil {
		// Like Envoy, take the first policy in the list that is supported.
		var names []string
		for _, p := range lp.GetPolicies() {
			url := p.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl()
			if pol, ok := typedPolicies[url]; ok {
				return pol, nil
			}
			names = append(names, url)
		}
		return 0, fmt.Errorf("load_balancing_policy %v not supported by onehop (round_robin, random, least_request are)", names)
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		return model.RoundRobin, nil
	case clusterv3.Cluster_RANDOM, clusterv3.Cluster_LEAST_REQUEST:
		return model.Random, nil
	}
	return 0, fmt.Errorf("lb_policy %s not supported by onehop", c.GetLbPolicy())
}

// endpoints returns the healthy endpoints by priority, in priority order with empty levels
// dropped. Locality weights are not used: they only matter for locality-weighted balancing,
// which onehop does not do.
func endpoints(cla *endpointv3.ClusterLoadAssignment) ([][]weighted, error) {
	raw := map[uint32]int{} // endpoints per priority, healthy or not
	healthy := map[uint32][]weighted{}
	for _, loc := range cla.GetEndpoints() {
		p := loc.GetPriority()
		for _, lb := range loc.GetLbEndpoints() {
			if raw[p]++; raw[p] > model.MaxSlots {
				return nil, fmt.Errorf("priority %d has more than %d endpoints", p, model.MaxSlots)
			}
			if len(raw) > model.MaxPriorities {
				return nil, fmt.Errorf("more than %d priority levels", model.MaxPriorities)
			}
			addr, err := endpointAddr(lb)
			if err != nil {
				return nil, err
			}
			w := uint64(1)
			if lw := lb.GetLoadBalancingWeight(); lw != nil {
				w = uint64(lw.GetValue())
			}
			if w == 0 || w > model.MaxWeight {
				return nil, fmt.Errorf("endpoint %s has weight %d (zero weight or over %d)", addr, w, model.MaxWeight)
			}
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
			default:
				continue // unhealthy, draining, timed out or degraded: not given new connections
			}
			healthy[p] = addWeighted(healthy[p], weighted{addr, w})
		}
	}
	// No endpoints at all is a service scaled to zero (or whose selector matches no pod): not an
	// error, its service is programmed with no endpoints.
	var levels [][]weighted
	for _, p := range slices.Sorted(maps.Keys(healthy)) {
		levels = append(levels, slices.Clone(healthy[p])) // exact size: kept as long as the assignment
	}
	return levels, nil
}

// addWeighted appends e, or adds its weight to the same address already in eps.
func addWeighted(eps []weighted, e weighted) []weighted {
	if i := slices.IndexFunc(eps, func(o weighted) bool { return o.addr == e.addr }); i >= 0 {
		eps[i].w += e.w
		return eps
	}
	return append(eps, e)
}

func endpointAddr(lb *endpointv3.LbEndpoint) (netip.AddrPort, error) {
	ep := lb.GetEndpoint()
	if ep == nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q has no address (named endpoints are not supported)", lb.GetEndpointName())
	}
	sa := ep.GetAddress().GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, errors.New("endpoint address is not an IP socket address")
	}
	ip, err := parseIP(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint address %w", err)
	}
	port, err := checkPort(sa.GetPortValue())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: %w", ip, err)
	}
	return netip.AddrPortFrom(ip, port), nil
}

// part is one cluster's endpoints at one level, with the cluster's weight in the service.
type part struct {
	cluster string
	weight  uint64
	eps     []weighted
}

// mix merges the parts into one level: endpoint j of cluster i gets
// weight_i * w_ij / sum_j(w_ij), made integral by scaling with the least common multiple of
// the clusters' sums, then reduced by the gcd of the results. That is exact; when the exact
// weights do not fit model.MaxWeight the update is refused rather than approximated.
func mix(parts []part) ([]model.Endpoint, error) {
	overflow := func(what string) error {
		return fmt.Errorf("effective endpoint weights overflow the %d onehop supports at %s (reduce weighted cluster or endpoint weights)", model.MaxWeight, what)
	}
	var wg uint64
	for _, p := range parts {
		wg = gcd(wg, p.weight)
	}
	sums := make([]uint64, len(parts))
	egs := make([]uint64, len(parts))
	lcm := uint64(1)
	for i, p := range parts {
		for _, e := range p.eps {
			egs[i] = gcd(egs[i], e.w)
		}
		for _, e := range p.eps {
			sums[i] += e.w / egs[i]
		}
		l, ok := mul(lcm/gcd(lcm, sums[i]), sums[i])
		if !ok {
			return nil, overflow(fmt.Sprintf("cluster %q", p.cluster))
		}
		lcm = l
	}
	var merged []weighted
	for i, p := range parts {
		for _, e := range p.eps {
			w, ok1 := mul(p.weight/wg, e.w/egs[i])
			w, ok2 := mul(w, lcm/sums[i])
			if !ok1 || !ok2 {
				return nil, overflow(fmt.Sprintf("cluster %q endpoint %s", p.cluster, e.addr))
			}
			j := slices.IndexFunc(merged, func(o weighted) bool { return o.addr == e.addr })
			switch {
			case j < 0:
				merged = append(merged, weighted{e.addr, w})
			case merged[j].w+w < w:
				return nil, overflow(fmt.Sprintf("cluster %q endpoint %s", p.cluster, e.addr))
			default:
				merged[j].w += w
			}
		}
	}
	var g uint64
	for _, e := range merged {
		g = gcd(g, e.w)
	}
	out := make([]model.Endpoint, len(merged))
	for i, e := range merged {
		if e.w/g > model.MaxWeight {
			return nil, overflow(fmt.Sprintf("endpoint %s (weight %d)", e.addr, e.w/g))
		}
		out[i] = model.Endpoint{Addr: e.addr, Weight: uint32(e.w / g)}
	}
	return out, nil
}

func mul(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
