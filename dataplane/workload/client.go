package workload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
	"github.com/onehop-mesh/onehop/dataplane/xds"
)

const (
	// istiod's first response holds every workload and service of the mesh.
	maxResponseBytes = 256 << 20
	// A NACK names at most this many rejected resources (and how many more there were).
	maxNackDetails = 20
)

// Client follows a control plane serving Istio's workload API: a Delta ADS stream
// (DeltaAggregatedResources) of workloadapi.TypeURL resources, the wildcard subscription
// ztunnel makes. Set the fields, then call Run.
type Client struct {
	Addr string       // host:port of the ADS server (plaintext gRPC: loopback or a lab namespace)
	Node *corev3.Node // sent on each stream's first request; built by the caller
	// Options tune the translation (the node's network).
	Options Options
	// Apply programs a config: the whole desired state, not a change, so it diffs against
	// what it programmed. It is called when the config changes, always for the first
	// response (even when the config is empty) and again after it failed. An error NACKs the
	// response. Apply runs on Run's goroutine; it may keep the map, which is never changed.
	Apply func(model.Config) error
	// ApplyChanged, if set, is called instead of Apply when the config differs from the one
	// last applied successfully only in the frontends listed (present in cfg: added or
	// changed; absent: removed).
	ApplyChanged func(cfg model.Config, changed []model.Key) error
	Metrics      *Metrics     // nil: no metrics
	Log          *slog.Logger // nil: no logs
	// Backoff bounds the wait before reconnecting (only then: responses are answered at once).
	Backoff xds.Backoff
	// Adopted is how many services the data plane held when the client started: a first
	// config with no service at all is then held back, as xds.Client.Adopted says.
	Adopted int

	running atomic.Bool
	state   atomic.Pointer[State] // made by the first Run; outlives streams

	mu        sync.Mutex
	ready     bool
	connected bool
	lastErr   error
	applies   uint64
	held      bool // an empty first config was held back (see Adopted)

	// Owned by Run.
	versions map[string]string // accepted resources' versions, for a reconnect's initial_resource_versions
	inSync   bool              // the data plane holds the config last translated
	issues   int               // issues of the last translation, to log changes
}

// Ready reports whether the first response's config has been applied. It stays true across
// reconnects, since the applied config stays programmed.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// LastError is the latest failure (stream lost, response NACKed, Apply failed), or nil once a
// response has been accepted since.
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// State is the client's state (nil before Run): the resources accepted and their translation.
func (c *Client) State() *State { return c.state.Load() }

// Identity returns the identity of the workload at ip, as the control plane last described it.
func (c *Client) Identity(ip netip.Addr) (WorkloadIdentity, bool) {
	if s := c.state.Load(); s != nil {
		return s.Identity(ip)
	}
	return WorkloadIdentity{}, false
}

// ServiceByVIP returns the service at vip, as the control plane last described it.
func (c *Client) ServiceByVIP(vip netip.Addr) (ServiceIdentity, bool) {
	if s := c.state.Load(); s != nil {
		return s.ServiceByVIP(vip)
	}
	return ServiceIdentity{}, false
}

// Status is the client's view, for an admin endpoint.
type Status struct {
	Ready     bool   `json:"ready"`
	HeldEmpty bool   `json:"held_empty_config,omitempty"`
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
	Applies   uint64 `json:"applies"`
	Summary
	// WorkloadIssues: workloads (or some of their addresses) that are nobody's endpoint, and why.
	WorkloadIssues []Issue `json:"workload_issues,omitempty"`
}

// Status reports the client's state: counts, not every service (see Services), so that it is
// cheap enough to poll.
func (c *Client) Status() Status {
	c.mu.Lock()
	st := Status{Ready: c.ready, HeldEmpty: c.held, Connected: c.connected, Applies: c.applies}
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	c.mu.Unlock()
	if s := c.state.Load(); s != nil {
		st.Summary = s.Summary()
		s.mu.RLock()
		for _, is := range s.wIssues {
			st.WorkloadIssues = append(st.WorkloadIssues, is...)
		}
		s.mu.RUnlock()
		sortIssues(st.WorkloadIssues)
	}
	return st
}

// Services lists every Service resource, what was programmed of it (steered to its waypoint
// or not) and why the rest was not. It walks every service.
func (c *Client) Services() []ServiceStatus {
	if s := c.state.Load(); s != nil {
		return s.Services()
	}
	return nil
}

func (c *Client) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Run follows the control plane until ctx is cancelled, then returns nil. When the stream
// breaks it keeps the applied config (Apply is not called) and reconnects with backoff,
// telling the server the versions it holds, so that the server sends what changed meanwhile
// and removes what went. It returns an error only for a misconfigured Client.
func (c *Client) Run(ctx context.Context) error {
	if c.Addr == "" || c.Apply == nil || c.Node == nil {
		return errors.New("workload API client: Addr, Node and Apply must be set")
	}
	if !c.running.CompareAndSwap(false, true) {
		return fmt.Errorf("workload API client for %s: Run is already running", c.Addr)
	}
	defer c.running.Store(false)
	if c.state.Load() == nil {
		c.state.Store(NewState(c.Options))
		c.versions = map[string]string{}
	}
	c.Backoff.Follow(ctx, func(ctx context.Context) (bool, error) {
		progressed, err := c.session(ctx)
		c.setConnected(false)
		return progressed, err
	}, func(err error, d time.Duration) {
		c.setErr(err)
		c.Metrics.reconnect()
		c.log().Warn("workload API stream lost; keeping the applied config", "addr", c.Addr, "err", err, "retry_in", d)
	})
	return nil
}

func (c *Client) setConnected(up bool) {
	c.mu.Lock()
	c.connected = up
	c.mu.Unlock()
	c.Metrics.setConnected(up)
}

// session runs one stream; progressed reports whether it got any response.
func (c *Client) session(ctx context.Context) (progressed bool, err error) {
	conn, err := grpc.NewClient(c.Addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)))
	if err != nil {
		return false, fmt.Errorf("workload API server address %q: %w", c.Addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open delta ADS stream to %s: %w", c.Addr, err)
	}
	// No names: the wildcard subscription (every Address), as ztunnel makes it.
	// initial_resource_versions tells the server what is held from the last stream.
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node:                    c.Node,
		TypeUrl:                 workloadapi.TypeURL,
		InitialResourceVersions: maps.Clone(c.versions),
	}); err != nil {
		return false, fmt.Errorf("workload API stream to %s: initial request: %w", c.Addr, err)
	}
	c.setConnected(true)
	c.log().Info("workload API stream open", "addr", c.Addr, "node", c.Node.GetId(), "held", len(c.versions))
	for {
		r, err := s.Recv()
		if err != nil {
			return progressed, fmt.Errorf("workload API stream from %s: %w", c.Addr, err)
		}
		progressed = true
		req := c.handle(r, time.Now())
		if err := s.Send(req); err != nil {
			return progressed, fmt.Errorf("workload API stream to %s: send ACK/NACK: %w", c.Addr, err)
		}
	}
}

// handle accepts a response, all of it or its valid part, and returns the ACK or NACK.
func (c *Client) handle(r *discoveryv3.DeltaDiscoveryResponse, arrived time.Time) *discoveryv3.DeltaDiscoveryRequest {
	log := c.log().With("version", r.GetSystemVersionInfo(), "nonce", r.GetNonce())
	reply := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: workloadapi.TypeURL, ResponseNonce: r.GetNonce()}
	if r.GetTypeUrl() != workloadapi.TypeURL {
		err := fmt.Errorf("response of type %s on a %s stream", r.GetTypeUrl(), workloadapi.TypeURL)
		c.reject(log, reply, err, 0)
		return reply
	}
	st := c.state.Load()
	var bad []string
	seen := make(map[string]bool, len(r.GetResources()))
	for _, res := range r.GetResources() {
		name := res.GetName()
		if err := c.accept(st, seen, res); err != nil {
			bad = append(bad, fmt.Sprintf("%q: %v", name, err))
			continue
		}
		if res.GetResource() != nil {
			c.versions[name] = res.GetVersion()
		}
	}
	for _, name := range r.GetRemovedResources() {
		st.Remove(name)
		delete(c.versions, name)
	}
	res := st.Translate()
	sum := st.Summary()
	c.Metrics.translated(sum)
	if len(res.Issues) != c.issues {
		c.issues = len(res.Issues)
		args := []any{"issues", len(res.Issues)}
		for i, is := range res.Issues[:min(len(res.Issues), 5)] {
			args = append(args, fmt.Sprintf("issue%d", i+1), is.String())
		}
		log.Info("workload API translation issues changed", args...)
	}

	// Most responses change no frontend (a workload's labels, a service's SANs): Apply only a
	// changed config. The first one is always applied, to replace whatever the data plane held
	// before, and so is the next one after a failed Apply, which may have left it half way.
	applied := false
	if !c.inSync && len(res.Config.Services) == 0 && c.Adopted > 0 {
		// As xds.Client: an empty first config would take down every adopted service.
		c.mu.Lock()
		first := !c.held
		c.held = true
		c.mu.Unlock()
		if first {
			log.Warn("the control plane's first config has no service at all: not applied, the services pinned by the previous agent stay programmed "+
				"(is the node identity right?)", "adopted_services", c.Adopted)
		}
		c.Metrics.update(true, 0)
		return reply
	}
	if !c.inSync || len(res.Changed) > 0 {
		var err error
		if c.inSync && c.ApplyChanged != nil {
			err = c.ApplyChanged(res.Config, res.Changed)
		} else {
			c.inSync = false
			err = c.Apply(res.Config)
		}
		if err != nil {
			c.inSync = false
			// The resources stay accepted: the next response applies the whole config again.
			err = fmt.Errorf("programming the data plane failed: %w", err)
			if len(bad) > 0 {
				err = fmt.Errorf("%w; %s", err, rejectedDetail(bad))
			}
			c.reject(log, reply, err, len(bad))
			return reply
		}
		c.inSync, applied = true, true
		c.Metrics.receiptToProgrammed(time.Since(arrived))
	}
	c.mu.Lock()
	c.ready, c.held = true, false
	if applied {
		c.applies++
	}
	c.mu.Unlock()
	if applied {
		log.Info("workload API update applied", "resources", len(r.GetResources()), "removed", len(r.GetRemovedResources()),
			"frontends", sum.Frontends, "changed", len(res.Changed), "steered", sum.Steered, "empty", sum.Empty)
	} else {
		log.Debug("workload API update accepted, config unchanged", "resources", len(r.GetResources()), "removed", len(r.GetRemovedResources()))
	}
	if len(bad) > 0 {
		// Partial acceptance, as Envoy does: the valid resources are applied, the others keep
		// their previous version (if any) and are named in the NACK.
		c.reject(log, reply, errors.New(rejectedDetail(bad)), len(bad))
		return reply
	}
	c.setErr(nil)
	c.Metrics.update(true, 0)
	if !applied {
		c.Metrics.receiptToProgrammed(time.Since(arrived))
	}
	return reply
}

// accept decodes one resource into st.
func (c *Client) accept(st *State, seen map[string]bool, res *discoveryv3.Resource) error {
	name := res.GetName()
	switch {
	case name == "":
		return errors.New("resource without a name")
	case seen[name]:
		return errors.New("named twice in one response")
	}
	seen[name] = true
	body := res.GetResource()
	if body == nil {
		return nil // a TTL heartbeat: the resource stays as it is
	}
	if body.GetTypeUrl() != workloadapi.TypeURL {
		return fmt.Errorf("resource of type %s, want %s", body.GetTypeUrl(), workloadapi.TypeURL)
	}
	a := &workloadapi.Address{}
	if err := proto.Unmarshal(body.GetValue(), a); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return st.Update(name, a)
}

func rejectedDetail(bad []string) string {
	msg := fmt.Sprintf("%d resources rejected: %s", len(bad), strings.Join(bad[:min(len(bad), maxNackDetails)], "; "))
	if len(bad) > maxNackDetails {
		msg += fmt.Sprintf("; and %d more", len(bad)-maxNackDetails)
	}
	return msg
}

func (c *Client) reject(log *slog.Logger, reply *discoveryv3.DeltaDiscoveryRequest, err error, rejected int) {
	reply.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
	c.setErr(fmt.Errorf("NACKed: %w", err))
	c.Metrics.update(false, rejected)
	log.Warn("workload API update rejected (NACK)", "err", err)
}
