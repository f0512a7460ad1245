// Package xds is the agent's xDS client: it follows a control plane over ADS (State of the World
// or Delta), translates listeners, routes, clusters and endpoint assignments into a
// model.Config, hands each accepted config to a callback, and ACKs or NACKs every response.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

const (
	defaultBackoffMin = 250 * time.Millisecond
	defaultBackoffMax = 30 * time.Second
	// A full LDS or EDS response for many services is far over gRPC's 4 MiB default; each
	// resource in it is still held to MaxResourceBytes by Translate.
	maxResponseBytes = 256 << 20
)

// Backoff bounds the wait before reconnecting. Zero values mean 250ms and 30s. Responses are
// always answered at once, NACKs included: a control plane that resends a rejected config is
// answered as fast as one that corrects it, so the correction is never held back.
type Backoff struct {
	Min, Max time.Duration
}

// Follow runs session until ctx is done, again after each loss: at once after a session that
// got responses, else after a growing delay. lost is told each loss and the wait before the
// next session. Both control plane clients (Envoy xDS, workload API) follow this way.
func (b Backoff) Follow(ctx context.Context, session func(context.Context) (progressed bool, err error), lost func(err error, retryIn time.Duration)) {
	for attempt := 0; ; attempt++ {
		progressed, err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			attempt = 0
		}
		d := b.delay(attempt)
		lost(err, d)
		if !sleep(ctx, d) {
			return
		}
	}
}

// delay is the n-th wait (from 0): Min doubling up to Max, with half of it random so that
// agents that lost the same control plane do not come back in step.
func (b Backoff) delay(n int) time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = defaultBackoffMin
	}
	if hi <= 0 {
		hi = defaultBackoffMax
	}
	hi = max(hi, lo)
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// Client follows one control plane. Set the fields, then call Run.
type Client struct {
	Addr    string // host:port of the ADS server (plaintext gRPC: loopback or a lab namespace)
	NodeID  string
	Cluster string
	// Node, when set, is sent as is (istiod wants its own id format and metadata); otherwise
	// a node of NodeID and Cluster.
	Node  *corev3.Node
	Delta bool // Delta xDS instead of State of the World
	// InitialFetchTimeout is how long an endpoint assignment or route configuration that the
	// listeners and clusters name may take to arrive before it is taken as empty (its
	// services programmed with no endpoints, or reported). Zero: DefaultInitialFetchTimeout.
	InitialFetchTimeout time.Duration
	// Adopted is how many services the data plane held when the client started (pinned by an
	// earlier agent). A first config with no service at all is then not applied: it would take
	// every one of them down, and it is what a control plane sends a node it does not know
	// (a wrong identity) as much as a mesh with no service. It is reported and waits for a
	// config with services.
	Adopted int
	// Apply programs a config: the whole desired state, not a change, so it diffs against
	// what it programmed. It is called when the config changes, always for the first one
	// (including an empty one) and again after it failed. An error NACKs the update that
	// produced the config. Apply runs on Run's goroutine.
	Apply func(model.Config) error
	// ApplyChanged, if set, is called instead of Apply when the client knows that cfg differs
	// from the config last applied successfully only in the services listed (present in cfg:
	// added or changed; absent: removed). It lets the data plane skip diffing the rest.
	ApplyChanged func(cfg model.Config, changed []model.Key) error
	Metrics      *Metrics     // nil: no metrics
	Log          *slog.Logger // nil: no logs
	Backoff      Backoff

	running atomic.Bool

	mu      sync.Mutex
	ready   bool
	lastErr error
	report  Report
	held    bool         // an empty first config was held back (see Adopted)
	current model.Config // what the data plane holds (never modified once applied)

	// Owned by Run: the accepted state outlives streams, so a reconnect starts from it.
	acc     *accepted
	applied model.Config
	inSync  bool // the data plane holds applied
	// indexed: the Translator's index is of the accepted state, so an endpoint update can
	// re-translate only the services it feeds.
	indexed bool
	// stillRejected is, per type, the rejection of the last response of that type that was
	// partly rejected, while the accepted state still holds it: a resend that changes nothing
	// is NACKed again, not ACKed.
	stillRejected map[string]error
	// reported is the Translator's issues that report and the metrics were made from: they
	// are made again only when a translation ran, not for every response.
	reported *issues
}

// Ready reports whether a complete config has been applied: clusters and listeners received,
// and every endpoint assignment and route they name arrived. It stays true across reconnects,
// since the applied config stays programmed.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// LastError is the latest failure (stream lost, update NACKed, Apply failed), or nil once an
// update has been accepted since.
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Report is what the applied config could not program as the control plane asked: services
// rejected (not programmed, or kept as they were) and services that need a waypoint.
func (c *Client) Report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report
}

// ServiceState is one service as the client last programmed it, or could not.
type ServiceState struct {
	Service    string `json:"service"` // VIP:port
	Name       string `json:"name,omitempty"`
	Policy     string `json:"policy,omitempty"`
	Endpoints  int    `json:"endpoints"`
	Programmed bool   `json:"programmed"`
	// Issue is why it is not programmed as asked: rejected (and kept at its previous
	// version if Programmed), or balanced by its catch-all route but needing a waypoint.
	Issue  string `json:"issue,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Services lists every service of the last config: programmed, rejected, or needing a
// waypoint, with the reasons. It walks every service: for a summary poll Report and /status.
func (c *Client) Services() []ServiceState {
	c.mu.Lock()
	cfg, rep := c.current, c.report
	c.mu.Unlock()
	byKey := map[string]*ServiceState{}
	for k, svc := range cfg.Services {
		n := 0
		for _, l := range svc.Priorities {
			n += len(l)
		}
		byKey[addrPort(k)] = &ServiceState{Service: addrPort(k), Name: svc.Name, Policy: svc.Policy.String(), Endpoints: n, Programmed: true}
	}
	note := func(is Issue, kind string) {
		if is.Service == "" {
			return
		}
		st := byKey[is.Service]
		if st == nil {
			st = &ServiceState{Service: is.Service}
			byKey[is.Service] = st
		}
		st.Issue, st.Reason = kind, is.Reason
	}
	for _, is := range rep.NeedsWaypoint {
		note(is, "needs_waypoint")
	}
	for _, is := range rep.Rejected {
		note(is, "rejected")
	}
	out := make([]ServiceState, 0, len(byKey))
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		out = append(out, *byKey[k])
	}
	return out
}

// HeldEmpty reports whether an empty first config is being held back (see Adopted).
func (c *Client) HeldEmpty() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

func (c *Client) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Run follows the control plane until ctx is cancelled, then returns nil. When the stream
// breaks it keeps the applied config (Apply is not called) and reconnects with backoff; a new
// stream asks for the full state again. It returns an error only for a misconfigured Client.
func (c *Client) Run(ctx context.Context) error {
	if c.Addr == "" || c.Apply == nil {
		return errors.New("xds client: Addr and Apply must be set")
	}
	if !c.running.CompareAndSwap(false, true) {
		return fmt.Errorf("xds client for %s: Run is already running", c.Addr)
	}
	defer c.running.Store(false)
	if c.acc == nil {
		c.acc = newAccepted(c.Delta)
	}
	c.Backoff.Follow(ctx, func(ctx context.Context) (bool, error) {
		progressed, err := c.session(ctx)
		c.Metrics.setConnected(false)
		return progressed, err
	}, func(err error, d time.Duration) {
		c.setErr(err)
		c.Metrics.reconnect()
		c.log().Warn("xDS stream lost; keeping the applied config", "addr", c.Addr, "err", err, "retry_in", d)
	})
	return nil
}

// session runs one ADS stream; progressed reports whether it got any response.
func (c *Client) session(ctx context.Context) (progressed bool, err error) {
	conn, err := grpc.NewClient(c.Addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)))
	if err != nil {
		return false, fmt.Errorf("xDS server address %q: %w", c.Addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	node := c.Node
	if node == nil {
		node = &corev3.Node{Id: c.NodeID, Cluster: c.Cluster, UserAgentName: "onehop-agent"}
	}
	var s stream
	if c.Delta {
		ds, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			return false, fmt.Errorf("open delta ADS stream to %s: %w", c.Addr, err)
		}
		s = &deltaStream{s: ds, node: node, acc: c.acc, subscribed: map[string]map[string]bool{}, asked: map[string]bool{}, dec: newDecoder()}
	} else {
		ss, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			return false, fmt.Errorf("open ADS stream to %s: %w", c.Addr, err)
		}
		s = &sotwStream{s: ss, node: node, nonce: map[string]string{}, version: map[string]string{}, names: map[string][]string{}, asked: map[string]bool{}, dec: newDecoder(), acc: c.acc, followed: map[string]map[string]bool{}}
	}
	w, _ := c.acc.wanted()
	if err := s.open(w); err != nil {
		return false, fmt.Errorf("ADS stream to %s: initial requests: %w", c.Addr, err)
	}
	c.Metrics.setConnected(true)
	c.log().Info("xDS stream open", "addr", c.Addr, "delta", c.Delta, "node", c.NodeID)
	st := &streamState{seen: map[string]bool{}, nacks: map[string]string{}, waiting: map[string]map[string]time.Time{}}
	// Receive on a goroutine of its own, so that the wait for resources that never come can
	// time out; everything else (decoding included) stays on this one.
	type received struct {
		msg     any
		err     error
		arrived time.Time
	}
	msgs := make(chan received)
	go func() {
		for {
			m, err := s.next()
			select {
			case msgs <- received{m, err, time.Now()}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	c.track(st)
	for {
		var expiry <-chan time.Time
		var timer *time.Timer
		if d, ok := c.nextExpiry(st); ok {
			timer = time.NewTimer(d)
			expiry = timer.C
		}
		var r *response
		select {
		case m := <-msgs:
			if m.err != nil {
				return progressed, fmt.Errorf("ADS stream from %s: %w", c.Addr, m.err)
			}
			progressed = true
			r = s.decode(m.msg, m.arrived)
		case <-expiry:
			r = c.expired(st)
		case <-ctx.Done():
			return progressed, ctx.Err()
		}
		if timer != nil {
			timer.Stop()
		}
		if r == nil {
			continue
		}
		if err := c.handle(ctx, s, st, r); err != nil {
			return progressed, fmt.Errorf("ADS stream to %s: %w", c.Addr, err)
		}
		c.track(st)
	}
}

// streamState is what the client remembers about one stream.
type streamState struct {
	seen  map[string]bool   // types accepted on this stream
	nacks map[string]string // per type, the NACK reason last logged
	// waiting is, per type (EDS, RDS), the names followed but not received, since when.
	waiting map[string]map[string]time.Time
	// trackedGen is the generation of the followed names waiting was made from.
	trackedGen int
	tracked    bool
}

// DefaultInitialFetchTimeout is how long the client waits for an endpoint assignment or route
// configuration it follows before taking it as empty, as Envoy's initial_fetch_timeout.
const DefaultInitialFetchTimeout = 15 * time.Second

func (c *Client) fetchTimeout() time.Duration {
	if c.InitialFetchTimeout > 0 {
		return c.InitialFetchTimeout
	}
	return DefaultInitialFetchTimeout
}

// track notes the followed EDS and RDS names that have not arrived, and since when. It walks
// every followed name only when they changed (new clusters or listeners); otherwise only the
// names still waited for.
func (c *Client) track(st *streamState) {
	w, _ := c.acc.wanted()
	if st.trackedGen == c.acc.wgen && st.tracked {
		for typ, names := range st.waiting {
			for n := range names {
				if c.acc.has(typ, n) {
					delete(names, n)
				}
			}
		}
		return
	}
	st.trackedGen, st.tracked = c.acc.wgen, true
	now := time.Now()
	for _, typ := range []string{resourcev3.EndpointType, resourcev3.RouteType} {
		was := st.waiting[typ]
		next := map[string]time.Time{}
		for _, n := range w[typ] {
			if c.acc.has(typ, n) {
				continue
			}
			if at, ok := was[n]; ok {
				next[n] = at
			} else {
				next[n] = now
			}
		}
		st.waiting[typ] = next
	}
}

// nextExpiry is how long until the oldest name waited for times out.
func (c *Client) nextExpiry(st *streamState) (time.Duration, bool) {
	var oldest time.Time
	for _, names := range st.waiting {
		for _, at := range names {
			if oldest.IsZero() || at.Before(oldest) {
				oldest = at
			}
		}
	}
	if oldest.IsZero() {
		return 0, false
	}
	return max(time.Until(oldest.Add(c.fetchTimeout())), 0), true
}

// expired makes a synthetic response holding, empty, the resources of one type waited for
// longer than the fetch timeout: a control plane that never sends a cluster's endpoints (or a
// route) leaves its services with none (or reports them), instead of pending for ever and
// keeping the agent unready. A later real resource replaces it.
func (c *Client) expired(st *streamState) *response {
	deadline := time.Now().Add(-c.fetchTimeout())
	for _, typ := range []string{resourcev3.EndpointType, resourcev3.RouteType} {
		var late []string
		for n, at := range st.waiting[typ] {
			if !at.After(deadline) {
				late = append(late, n)
			}
		}
		if len(late) == 0 {
			continue
		}
		slices.Sort(late)
		r := &response{typeURL: typ, version: "(not received)", upsert: map[string]resource{}, arrived: time.Now(), synthetic: true}
		for _, n := range late {
			delete(st.waiting[typ], n)
			if typ == resourcev3.EndpointType {
				r.upsert[n] = resource{msg: &Assignment{Name: n}}
			} else {
				r.upsert[n] = resource{msg: &routev3.RouteConfiguration{Name: n}}
			}
		}
		c.log().Warn(fmt.Sprintf("%s not received within %v: taken as empty until it comes", typeLabel(typ), c.fetchTimeout()),
			"names", late[:min(len(late), 5)], "count", len(late))
		return r
	}
	return nil
}

// handle accepts or rejects one response and sends the ACK or NACK, then any subscription
// change the accepted resources call for. A response some of whose services cannot be
// programmed is accepted for the rest (they are programmed) and NACKed with the others.
func (c *Client) handle(ctx context.Context, s stream, st *streamState, r *response) error {
	cand, cfg, applied, rejected, err := c.evaluate(st, r)
	log := c.log().With("type", typeLabel(r.typeURL), "version", r.version, "nonce", r.nonce)
	if err != nil {
		c.Metrics.update(r.typeURL, false)
		c.setErr(fmt.Errorf("rejected %s version %q: %w", typeLabel(r.typeURL), r.version, err))
		c.logNACK(log, st, r.typeURL, "xDS update rejected (NACK)", err)
		if r.synthetic {
			return nil
		}
		return s.nack(r, err)
	}
	c.acc.commit(cand, r)
	c.applied = cfg
	c.indexed = c.acc.tr.idx != nil // a full Translate of what was just accepted, or an update of one
	st.seen[r.typeURL] = true
	c.Metrics.update(r.typeURL, rejected == nil)
	// New clusters or listeners change which endpoint assignments and routes to follow.
	w, fresh := c.acc.wanted()
	var report *Report
	if c.inSync && c.acc.tr.is != c.reported {
		c.reported = c.acc.tr.is
		rep := c.acc.tr.Report()
		report = &rep
	}
	c.mu.Lock()
	if rejected != nil {
		c.lastErr = fmt.Errorf("partly rejected %s version %q: %w", typeLabel(r.typeURL), r.version, rejected)
	} else {
		c.lastErr = nil
	}
	if report != nil {
		c.report = *report
	}
	c.ready = c.ready || (c.inSync && c.acc.complete(w))
	c.mu.Unlock()
	if report != nil {
		c.Metrics.setReport(*report)
	}
	if applied {
		c.Metrics.receiptToProgrammed(r.typeURL, time.Since(r.arrived))
		log.Info("xDS update applied", "services", len(cfg.Services), "nack", rejected != nil)
	} else {
		log.Debug("xDS update accepted, config unchanged")
	}
	switch {
	case r.synthetic:
		if rejected != nil {
			log.Warn("resources taken as empty leave services not programmed", "err", rejected)
		}
	case rejected != nil:
		c.logNACK(log, st, r.typeURL, "xDS update partly rejected (NACK): the rest is programmed", rejected)
		err = s.nack(r, rejected)
	default:
		delete(st.nacks, r.typeURL)
		err = s.ack(r)
	}
	if err != nil {
		return err
	}
	if !applied {
		c.Metrics.receiptToProgrammed(r.typeURL, time.Since(r.arrived))
	}
	for _, typ := range []string{resourcev3.EndpointType, resourcev3.RouteType} {
		if err := s.subscribe(typ, w[typ]); err != nil {
			return err
		}
	}
	if fresh {
		c.acc.prune(w)
	} else {
		c.acc.pruneNames(r.typeURL, w, r.changed) // only what this response added can be unwanted
	}
	return nil
}

// logNACK logs a NACK, at warning level when its reason is new: a control plane that resends
// a rejected config gets the same NACK each time, and the log says it once.
func (c *Client) logNACK(log *slog.Logger, st *streamState, typ, msg string, err error) {
	if st.nacks[typ] == err.Error() {
		log.Debug(msg+" (again)", "err", err)
		return
	}
	st.nacks[typ] = err.Error()
	log.Warn(msg, "err", err)
}

// evaluate builds the state the response would make, translates it and applies the result
// if it changed. rejected, when not nil, names the services the response asked for that
// could not be programmed: the rest was, and the response is to be NACKed with it.
func (c *Client) evaluate(st *streamState, r *response) (cand State, cfg model.Config, applied bool, rejected, err error) {
	if r.err != nil {
		return State{}, model.Config{}, false, nil, r.err
	}
	cand, changed := c.acc.candidate(r)
	r.changed = changed
	cand.Previous = c.applied
	cand.AcceptedListeners, cand.AcceptedRoutes = c.acc.state.Listeners, c.acc.state.Routes
	cand.AwaitingClusters = !st.seen[resourcev3.ClusterType]
	// A response that changes no resource, or only endpoint assignments, needs only the
	// services those feed re-translated (SotW resends every unchanged resource).
	var diff []model.Key
	incremental := false
	if c.indexed && (len(changed) == 0 || r.typeURL == resourcev3.EndpointType) {
		if len(changed) == 0 {
			cfg, incremental = c.applied, true
		} else {
			cfg, diff, incremental, err = c.acc.tr.UpdateEndpoints(&cand, changed)
		}
	}
	if !incremental {
		c.indexed = false
		cfg, err = c.acc.tr.Translate(&cand)
	}
	var rej *RejectedError
	if errors.As(err, &rej) {
		rejected, err = rej, nil // partial: program the rest
	}
	if err != nil {
		return State{}, model.Config{}, false, nil, err
	}
	if c.stillRejected == nil {
		c.stillRejected = map[string]error{}
	}
	switch {
	case incremental && len(changed) == 0:
		rejected = c.stillRejected[r.typeURL]
	case !incremental && rejected == nil:
		clear(c.stillRejected) // the whole state translates: nothing is rejected any more
	default:
		c.stillRejected[r.typeURL] = rejected
	}
	// A new client holds back until the config is complete: applying the clusters before the
	// listeners (or a listener before its routes and endpoints) would take services out of maps
	// that an earlier agent left programmed and that are serving traffic right now.
	if !c.inSync && !c.acc.completes(&cand, st.seen, r.typeURL) {
		return cand, cfg, false, rejected, nil
	}
	if !c.inSync && len(cfg.Services) == 0 && c.Adopted > 0 {
		c.mu.Lock()
		first := !c.held
		c.held = true
		c.mu.Unlock()
		if first {
			c.log().Warn("the control plane's first config has no service at all: not applied, the services pinned by the previous agent stay programmed "+
				"(is the node identity right? a proxy type or namespace istiod does not serve gets an empty config)", "adopted_services", c.Adopted)
		}
		return cand, cfg, false, rejected, nil
	}
	// Most responses change nothing the kernel sees (new versions of unchanged resources,
	// health changes of endpoints already out): Apply only a changed config. The first one
	// is always applied, to replace whatever the data plane held before, and so is the next
	// one after a failed Apply, which may have left the data plane half way.
	if c.inSync && (incremental && len(diff) == 0 || !incremental && sameConfig(cfg, c.applied)) {
		return cand, cfg, false, rejected, nil
	}
	if c.inSync && incremental && c.ApplyChanged != nil {
		err = c.ApplyChanged(cfg, diff)
	} else {
		c.inSync = false
		err = c.Apply(cfg)
	}
	if err != nil {
		c.inSync = false
		return State{}, model.Config{}, false, nil, fmt.Errorf("programming the data plane failed: %w", err)
	}
	c.inSync = true
	c.mu.Lock()
	c.held, c.current = false, cfg
	c.mu.Unlock()
	return cand, cfg, true, rejected, nil
}

func sameConfig(a, b model.Config) bool {
	return maps.EqualFunc(a.Services, b.Services, sameService)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// accepted is what the client has ACKed: the resources and their versions.
type accepted struct {
	tr       Translator          // remembers what unchanged resources translate to
	w        map[string][]string // wanted, until clusters or listeners change
	wgen     int                 // counts the times w was worked out
	state    State
	versions map[string]map[string]string // type URL -> resource name -> version (Delta resync)
	delta    bool                         // keep versions: only Delta streams send them back
	seen     map[string]bool              // types accepted at least once
}

func newAccepted(delta bool) *accepted {
	return &accepted{versions: map[string]map[string]string{}, seen: map[string]bool{}, delta: delta}
}

// candidate is the accepted state with the response applied, leaving the accepted maps as
// they are, and the names of the response's type whose message it changed, added or removed.
func (a *accepted) candidate(r *response) (State, []string) {
	s := a.state
	var changed []string
	switch r.typeURL {
	case resourcev3.ListenerType:
		s.Listeners, changed = merge(a.state.Listeners, r)
	case resourcev3.RouteType:
		s.Routes, changed = merge(a.state.Routes, r)
	case resourcev3.ClusterType:
		s.Clusters, changed = merge(a.state.Clusters, r)
	case resourcev3.EndpointType:
		s.Endpoints, changed = merge(a.state.Endpoints, r)
		// A removed assignment (Delta) says the cluster has no endpoints, not that they are
		// still on their way: its services are programmed empty rather than kept as they were.
		w, _ := a.wanted()
		for _, n := range r.remove {
			if _, wanted := slices.BinarySearch(w[resourcev3.EndpointType], n); wanted && r.upsert[n].msg == nil {
				s.Endpoints[n] = &Assignment{Name: n}
			}
		}
	}
	return s, changed
}

func merge[M comparable](cur map[string]M, r *response) (map[string]M, []string) {
	var changed []string
	out := make(map[string]M, len(cur)+len(r.upsert))
	if !r.full {
		maps.Copy(out, cur)
	}
	for _, n := range r.keep {
		if m, ok := cur[n]; ok {
			out[n] = m
		}
	}
	for _, n := range r.remove {
		if _, ok := out[n]; ok {
			changed = append(changed, n)
		}
		delete(out, n)
	}
	for n, res := range r.upsert {
		m := res.msg.(M)
		if old, ok := cur[n]; !ok || old != m {
			changed = append(changed, n)
		}
		out[n] = m
	}
	if r.full {
		for n := range cur {
			if _, ok := out[n]; !ok {
				changed = append(changed, n)
			}
		}
	}
	return out, changed
}

// holds reports whether v is the accepted message of the non-wildcard type.
func (a *accepted) holds(typ, name string, v any) bool {
	switch typ {
	case resourcev3.EndpointType:
		cur, ok := a.state.Endpoints[name]
		return ok && any(cur) == v
	case resourcev3.RouteType:
		cur, ok := a.state.Routes[name]
		return ok && any(cur) == v
	}
	return false
}

func (a *accepted) commit(s State, r *response) {
	if wildcard(r.typeURL) && len(r.changed) > 0 {
		a.w = nil
	}
	s.Previous, s.AcceptedListeners, s.AcceptedRoutes, s.AwaitingClusters = model.Config{}, nil, nil, false
	a.state = s
	a.seen[r.typeURL] = true
	if !a.delta || r.synthetic {
		return
	}
	vs := a.versions[r.typeURL]
	if vs == nil || r.full {
		old := vs
		vs = map[string]string{}
		for _, n := range r.keep {
			if v, ok := old[n]; ok {
				vs[n] = v
			}
		}
	}
	for _, n := range r.remove {
		delete(vs, n)
	}
	for n, res := range r.upsert {
		vs[n] = res.version
	}
	a.versions[r.typeURL] = vs
}

// wanted is the names to follow for the non-wildcard types.
// fresh says they were worked out again: clusters or listeners changed.
func (a *accepted) wanted() (w map[string][]string, fresh bool) {
	if a.w == nil {
		a.wgen++
		a.w, fresh = map[string][]string{
			resourcev3.EndpointType: endpointNames(a.state.Clusters),
			resourcev3.RouteType:    routeNames(a.state.Listeners),
		}, true
	}
	return a.w, fresh
}

// pruneNames is prune for the given names of a non-wildcard type only.
func (a *accepted) pruneNames(typ string, w map[string][]string, names []string) {
	for _, n := range names {
		if _, ok := slices.BinarySearch(w[typ], n); !ok {
			a.forget(typ, n)
		}
	}
}

// prune forgets endpoint assignments and routes nothing names any more.
func (a *accepted) prune(w map[string][]string) {
	keep := func(typ string) map[string]bool {
		set := map[string]bool{}
		for _, n := range w[typ] {
			set[n] = true
		}
		return set
	}
	eds, rds := keep(resourcev3.EndpointType), keep(resourcev3.RouteType)
	for n := range a.state.Endpoints {
		if !eds[n] {
			a.forget(resourcev3.EndpointType, n)
		}
	}
	for n := range a.state.Routes {
		if !rds[n] {
			a.forget(resourcev3.RouteType, n)
		}
	}
}

// has reports whether the accepted state holds the named resource of a non-wildcard type.
func (a *accepted) has(typ, name string) bool {
	switch typ {
	case resourcev3.EndpointType:
		return a.state.Endpoints[name] != nil
	case resourcev3.RouteType:
		return a.state.Routes[name] != nil
	}
	return false
}

func (a *accepted) forget(typ, name string) {
	switch typ {
	case resourcev3.EndpointType:
		delete(a.state.Endpoints, name)
	case resourcev3.RouteType:
		delete(a.state.Routes, name)
	}
	delete(a.versions[typ], name)
}

// completes reports whether s, the state a response of type typ would make, is complete: clusters
// and listeners arrived (seen, or this response) and nothing they name is missing.
func (a *accepted) completes(s *State, seen map[string]bool, typ string) bool {
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if !seen[t] && typ != t {
			return false
		}
	}
	for _, n := range endpointNames(s.Clusters) {
		if s.Endpoints[n] == nil {
			return false
		}
	}
	for _, n := range routeNames(s.Listeners) {
		if s.Routes[n] == nil {
			return false
		}
	}
	return true
}

// complete reports whether clusters and listeners arrived and nothing they name (w, from
// wanted) is missing.
func (a *accepted) complete(w map[string][]string) bool {
	if !a.seen[resourcev3.ClusterType] || !a.seen[resourcev3.ListenerType] {
		return false
	}
	for _, n := range w[resourcev3.EndpointType] {
		if a.state.Endpoints[n] == nil {
			return false
		}
	}
	for _, n := range w[resourcev3.RouteType] {
		if a.state.Routes[n] == nil {
			return false
		}
	}
	return true
}

// decode unpacks one resource of the response's type and returns it with its name.
func decode(typeURL string, res interface {
	GetTypeUrl() string
	GetValue() []byte
}) (proto.Message, string, error) {
	var m proto.Message
	switch typeURL {
	case resourcev3.ListenerType:
		m = &listenerv3.Listener{}
	case resourcev3.RouteType:
		m = &routev3.RouteConfiguration{}
	case resourcev3.ClusterType:
		m = &clusterv3.Cluster{}
	case resourcev3.EndpointType:
		m = &endpointv3.ClusterLoadAssignment{}
	default:
		return nil, "", fmt.Errorf("resource type %s is not one onehop subscribes to", typeURL)
	}
	if res.GetTypeUrl() != typeURL {
		return nil, "", fmt.Errorf("resource of type %s in a %s response", res.GetTypeUrl(), typeURL)
	}
	if err := proto.Unmarshal(res.GetValue(), m); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", typeURL, err)
	}
	name := resourceName(m)
	if name == "" {
		return nil, "", fmt.Errorf("%s resource without a name", typeLabel(typeURL))
	}
	return m, name, nil
}

func resourceName(m proto.Message) string {
	var name string
	switch v := m.(type) {
	case *listenerv3.Listener:
		name = v.GetName()
	case *routev3.RouteConfiguration:
		name = v.GetName()
	case *clusterv3.Cluster:
		name = v.GetName()
	case *endpointv3.ClusterLoadAssignment:
		name = v.GetClusterName()
	}
	return name
}
