package xds

import (
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// subscriptionOrder is the order of a new stream's first requests: clusters and their
// endpoints before the listeners and routes that use them, as Envoy does.
var subscriptionOrder = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// wildcard types are followed in full; the others by the names the wildcard ones reference.
func wildcard(typeURL string) bool {
	return typeURL == resourcev3.ClusterType || typeURL == resourcev3.ListenerType
}

// response is one decoded xDS response of either protocol variant.
type response struct {
	typeURL string
	version string // SotW version_info; Delta system_version_info (for logs)
	nonce   string
	full    bool // the response holds the whole set of its type (SotW CDS and LDS)
	upsert  map[string]resource
	keep    []string // named in the response without a body (TTL heartbeat): unchanged
	remove  []string
	err     error // the response could not be decoded: NACK it
	arrived time.Time
	// synthetic: made by the client, not received (resources that never came, taken as
	// empty): nothing is sent back for it.
	synthetic bool
	changed   []string // names whose message the response changed, added or removed
}

type resource struct {
	msg     any // the decoded message, or a *Cluster or *Assignment
	version string
}

type decoded struct {
	msg  any
	name string
}

// decoder decodes resources, handing back the message decoded before for bytes it has seen
// in the previous response of the type: a SotW response repeats every unchanged resource,
// and the same message lets the Translator reuse what it translated. Bytes are matched by
// two 64-bit hashes with random seeds: a collision needs a 128-bit coincidence.
// Listeners, clusters and endpoint assignments are translated as they are decoded and kept as
// *Listener, *Cluster and *Assignment.
type decoder struct {
	s1, s2 maphash.Seed
	prev   map[string]map[[2]uint64]decoded // per type, the last response's messages
	cur    map[[2]uint64]decoded
	spare  map[[2]uint64]decoded // a map to reuse: a SotW response can hold 10,000s of resources
}

func newDecoder() *decoder {
	return &decoder{s1: maphash.MakeSeed(), s2: maphash.MakeSeed(), prev: map[string]map[[2]uint64]decoded{}}
}

// begin starts a response of the type; end makes its messages the ones reused next time.
func (d *decoder) begin() {
	d.cur, d.spare = d.spare, nil
	if d.cur == nil {
		d.cur = map[[2]uint64]decoded{}
	}
}

func (d *decoder) end(typeURL string) {
	d.spare, d.prev[typeURL], d.cur = d.prev[typeURL], d.cur, nil
	clear(d.spare)
}

func (d *decoder) decode(typeURL string, res interface {
	GetTypeUrl() string
	GetValue() []byte
}) (any, string, error) {
	h := [2]uint64{maphash.Bytes(d.s1, res.GetValue()), maphash.Bytes(d.s2, res.GetValue())}
	if m, ok := d.prev[typeURL][h]; ok && res.GetTypeUrl() == typeURL {
		d.cur[h] = m
		return m.msg, m.name, nil
	}
	m, name, err := decode(typeURL, res)
	if err != nil {
		return nil, "", err
	}
	var v any = m
	switch m := m.(type) {
	case *listenerv3.Listener:
		v = newListener(m, res.GetValue())
	case *endpointv3.ClusterLoadAssignment:
		v = newAssignment(m, len(res.GetValue()))
	case *clusterv3.Cluster:
		v = newCluster(m, len(res.GetValue()))
	}
	d.cur[h] = decoded{v, name}
	return v, name, nil
}

// stream is one ADS stream.
type stream interface {
	// open sends a new stream's requests: the wildcard types, and the others for the names
	// already followed.
	open(wanted map[string][]string) error
	// next receives the next message; it may run on a goroutine of its own, beside the rest.
	next() (any, error)
	// decode makes the response of a message next received; it runs with the rest.
	decode(msg any, arrived time.Time) *response
	ack(r *response) error
	nack(r *response, reason error) error
	// subscribe sets the names followed for a non-wildcard type; it sends nothing if they
	// did not change.
	subscribe(typeURL string, names []string) error
}

func errorDetail(reason error) *statuspb.Status {
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: reason.Error()}
}

// sotwStream speaks State of the World: every request carries the full list of names, the
// version accepted and the nonce of the last response of its type.
type sotwStream struct {
	s       discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node    *corev3.Node        // sent with the first request only
	nonce   map[string]string   // last response nonce, per type
	version map[string]string   // last version accepted on this stream, per type
	names   map[string][]string // names requested, per non-wildcard type
	asked   map[string]bool     // types requested on this stream
	dec     *decoder
	acc     *accepted
	// followed is names as a set, made when they change rather than for each response.
	followed map[string]map[string]bool
}

func (s *sotwStream) send(req *discoveryv3.DiscoveryRequest) error {
	req.Node, s.node = s.node, nil
	if err := s.s.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", typeLabel(req.GetTypeUrl()), err)
	}
	return nil
}

func (s *sotwStream) open(wanted map[string][]string) error {
	// Versions start empty on a new stream: the server sends its full state, not the
	// changes since what was accepted on the last one.
	for _, typ := range subscriptionOrder {
		if !wildcard(typ) {
			if err := s.subscribe(typ, wanted[typ]); err != nil {
				return err
			}
			continue
		}
		s.asked[typ] = true
		// No names: the (legacy) wildcard, which every SotW server understands.
		if err := s.send(&discoveryv3.DiscoveryRequest{TypeUrl: typ}); err != nil {
			return err
		}
	}
	return nil
}

func (s *sotwStream) subscribe(typeURL string, names []string) error {
	if s.asked[typeURL] && slices.Equal(s.names[typeURL], names) {
		return nil
	}
	// A first request without names would be a wildcard subscription: wait for names.
	if !s.asked[typeURL] && len(names) == 0 {
		return nil
	}
	s.asked[typeURL], s.names[typeURL] = true, names
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	s.followed[typeURL] = set
	return s.send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       typeURL,
		VersionInfo:   s.version[typeURL],
		ResponseNonce: s.nonce[typeURL],
		ResourceNames: names,
	})
}

func (s *sotwStream) next() (any, error) { return s.s.Recv() }

func (s *sotwStream) decode(msg any, arrived time.Time) *response {
	m := msg.(*discoveryv3.DiscoveryResponse)
	typ := m.GetTypeUrl()
	s.nonce[typ] = m.GetNonce()
	s.dec.begin()
	defer s.dec.end(typ)
	r := &response{typeURL: typ, version: m.GetVersionInfo(), nonce: m.GetNonce(), full: wildcard(typ), upsert: map[string]resource{}, arrived: arrived}
	followed := s.followed[typ]
	for _, a := range m.GetResources() {
		body, heartbeat := a, ""
		// Resources with a TTL come wrapped; a wrapper without a body renews the resource.
		if a.MessageIs((*discoveryv3.Resource)(nil)) {
			w := &discoveryv3.Resource{}
			if err := a.UnmarshalTo(w); err != nil {
				r.err = fmt.Errorf("decode resource wrapper: %w", err)
				return r
			}
			if body, heartbeat = w.GetResource(), w.GetName(); body == nil {
				r.keep = append(r.keep, heartbeat)
				continue
			}
		}
		msg, name, err := s.dec.decode(typ, body)
		if err == nil {
			if _, dup := r.upsert[name]; dup {
				err = fmt.Errorf("%s %q appears twice in one response", typeLabel(typ), name)
			}
		}
		if err != nil {
			r.err = err
			return r
		}
		// EDS and RDS responses may carry names no longer followed: leave those out. They
		// repeat every unchanged resource too: leave out what is accepted already, so that
		// the response costs what changed in it.
		if !r.full && (!followed[name] || s.acc.holds(typ, name, msg)) {
			continue
		}
		r.upsert[name] = resource{msg: msg, version: m.GetVersionInfo()}
	}
	return r
}

func (s *sotwStream) ack(r *response) error {
	s.version[r.typeURL] = r.version
	return s.send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       r.typeURL,
		VersionInfo:   r.version,
		ResponseNonce: r.nonce,
		ResourceNames: s.names[r.typeURL],
	})
}

func (s *sotwStream) nack(r *response, reason error) error {
	return s.send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       r.typeURL,
		VersionInfo:   s.version[r.typeURL], // the previous accepted version
		ResponseNonce: r.nonce,
		ResourceNames: s.names[r.typeURL],
		ErrorDetail:   errorDetail(reason),
	})
}

// deltaStream speaks Delta xDS: requests carry subscription changes, responses carry changed
// and removed resources.
type deltaStream struct {
	s          discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node       *corev3.Node // sent with the first request only
	acc        *accepted
	subscribed map[string]map[string]bool // names followed, per non-wildcard type
	asked      map[string]bool            // types requested on this stream
	dec        *decoder
}

func (s *deltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) error {
	req.Node, s.node = s.node, nil
	if err := s.s.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", typeLabel(req.GetTypeUrl()), err)
	}
	return nil
}

func (s *deltaStream) open(wanted map[string][]string) error {
	for _, typ := range subscriptionOrder {
		if !wildcard(typ) {
			if err := s.subscribe(typ, wanted[typ]); err != nil {
				return err
			}
			continue
		}
		s.asked[typ] = true
		// initial_resource_versions tells the server what the client holds, so it sends
		// what changed and removes what is gone while the stream was down.
		if err := s.send(&discoveryv3.DeltaDiscoveryRequest{
			TypeUrl:                 typ,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: maps.Clone(s.acc.versions[typ]),
		}); err != nil {
			return err
		}
	}
	return nil
}

func (s *deltaStream) subscribe(typeURL string, names []string) error {
	cur := s.subscribed[typeURL]
	var add, del []string
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if !cur[n] {
			add = append(add, n)
		}
	}
	for n := range cur {
		if !want[n] {
			del = append(del, n)
		}
	}
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	slices.Sort(del)
	s.subscribed[typeURL] = want
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: del}
	if !s.asked[typeURL] {
		s.asked[typeURL] = true
		req.InitialResourceVersions = map[string]string{}
		for _, n := range add {
			if v, ok := s.acc.versions[typeURL][n]; ok {
				req.InitialResourceVersions[n] = v
			}
		}
	}
	return s.send(req)
}

func (s *deltaStream) next() (any, error) { return s.s.Recv() }

func (s *deltaStream) decode(msg any, arrived time.Time) *response {
	m := msg.(*discoveryv3.DeltaDiscoveryResponse)
	typ := m.GetTypeUrl()
	s.dec.begin()
	defer s.dec.end(typ)
	r := &response{typeURL: typ, version: m.GetSystemVersionInfo(), nonce: m.GetNonce(), upsert: map[string]resource{}, remove: m.GetRemovedResources(), arrived: arrived}
	for _, res := range m.GetResources() {
		if res.GetResource() == nil {
			continue // TTL heartbeat: the resource stays as it is
		}
		msg, name, err := s.dec.decode(typ, res.GetResource())
		if err == nil && res.GetName() != "" && res.GetName() != name {
			err = fmt.Errorf("%s %q carries a resource named %q", typeLabel(typ), res.GetName(), name)
		}
		if err != nil {
			r.err = err
			return r
		}
		r.upsert[name] = resource{msg: msg, version: res.GetVersion()}
	}
	return r
}

func (s *deltaStream) ack(r *response) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResponseNonce: r.nonce})
}

func (s *deltaStream) nack(r *response, reason error) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResponseNonce: r.nonce, ErrorDetail: errorDetail(reason)})
}
