// Package controlplane is the lab's xDS control plane: it serves the service store's services
// and endpoints over ADS (state-of-the-world and delta) in the names and shapes istiod uses, so
// the onehop agent's xDS translation is exercised the way a real mesh control plane would.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xdslog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// nodeGroup is the one snapshot-cache key: every lab node sees the same services.
const nodeGroup = "lab"

// Options tune a Server. The zero value is usable.
type Options struct {
	// Log receives one line per published version and per rejected (NACKed) response.
	// Nil discards.
	Log *slog.Logger
	// Policy is every cluster's lb_policy: model.Random (default, like kube-proxy's iptables
	// mode) or model.RoundRobin.
	Policy model.Policy
}

// Server publishes the store's state as xDS snapshots, and as Istio's ambient workload API
// (Delta ADS, workloadapi.TypeURL) for agents in workload mode. Every node, whatever its id, gets the
// same snapshot, versioned with the store's version. The cache runs in ADS mode: it answers an
// EDS or RDS request only when it names every load assignment or route of the snapshot, as
// Envoy's requests do after each CDS or LDS update, so clients never see a partial set.
type Server struct {
	store  *services.Store
	opts   Options
	log    *slog.Logger
	cache  cachev3.SnapshotCache
	wl     *workloadPublisher
	served atomic.Bool

	builder *builder // owned by the publishing goroutine
	applied uint64   // the store version the builder holds
}

// allNodes maps every node to the one snapshot all nodes share.
type allNodes struct{}

func (allNodes) ID(*corev3.Node) string { return nodeGroup }

// New returns a server for the store; it publishes nothing until Serve.
func New(store *services.Store, opts Options) *Server {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "xds")
	return &Server{store: store, opts: opts, log: log,
		cache: cachev3.NewSnapshotCache(true, allNodes{}, xdsLogger(log)), wl: newWorkloadPublisher()}
}

// Serve publishes the store's current state, then a new snapshot on every store change, and
// serves ADS, delta ADS and the per-type discovery services on l until ctx is done. It closes l.
// A Server serves once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		l.Close()
		return fmt.Errorf("xDS server on %s: already served; create a new Server", l.Addr())
	}
	b, err := newBuilder(s.opts.Policy)
	if err != nil {
		l.Close()
		return fmt.Errorf("xDS server on %s: %w", l.Addr(), err)
	}
	s.builder = b

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Watch before the first publish so no change falls between the two.
	changes := s.store.Watch()
	s.publish()

	mux := &cachev3.MuxCache{
		Classify: func(r *cachev3.Request) string { return cacheFor(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string {
			return cacheFor(r.GetTypeUrl())
		},
		Caches: map[string]cachev3.Cache{"envoy": s.cache, "workload": s.wl.cache},
	}
	xds := serverv3.NewServer(ctx, mux, s.callbacks(), sotw.WithOrderedADS(), sotw.WithLogger(xdsLogger(s.log)))
	g := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, xds)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				// Stop, not GracefulStop: xDS streams never end on their own.
				g.Stop()
				return
			case <-changes:
				s.publish()
			}
		}
	}()
	s.log.Info("xDS serving", "addr", l.Addr().String(), "policy", s.opts.Policy.String())
	err = g.Serve(l)
	cancel()
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xDS server on %s: %w", l.Addr(), err)
	}
	return nil
}

// publish brings the snapshot to the store's current state, rebuilding only the services that
// changed, and sets it for every node. A snapshot that cannot be built is logged and skipped:
// clients keep the last good version rather than a broken one, and the next change retries.
func (s *Server) publish() {
	changes := s.store.ChangesSince(s.applied)
	xs, err := s.builder.apply(changes)
	if err != nil {
		s.log.Error("xDS snapshot not published; clients keep the previous version", "version", changes.Version, "err", err)
		return
	}
	s.applied = changes.Version
	if err := s.cache.SetSnapshot(context.Background(), nodeGroup, xs); err != nil {
		s.log.Error("xDS snapshot not published; clients keep the previous version", "version", changes.Version, "err", err)
		return
	}
	if err := s.wl.publish(s.store); err != nil {
		s.log.Error("workload API not published; clients keep the previous version", "version", changes.Version, "err", err)
	}
	s.log.Info("xDS snapshot published", "version", changes.Version, "services", len(s.builder.services), "changed", len(changes.Services)+len(changes.Deleted),
		"clusters", len(xs.Resources[types.Cluster].Items), "listeners", len(xs.Resources[types.Listener].Items))
}

func cacheFor(typeURL string) string {
	if isWorkloadType(typeURL) {
		return "workload"
	}
	return "envoy"
}

// callbacks log who connects and every NACK, which names the resource the client rejected.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, r *discoverygrpc.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				s.log.Warn("xDS response rejected", "node", r.GetNode().GetId(), "stream", id,
					"type", r.GetTypeUrl(), "version", r.GetVersionInfo(), "err", r.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, r *discoverygrpc.DeltaDiscoveryRequest) error {
			if isWorkloadType(r.GetTypeUrl()) {
				if err := s.wl.want(s.store); err != nil {
					s.log.Error("workload API not published", "err", err)
				}
			}
			if r.GetErrorDetail() != nil {
				s.log.Warn("xDS delta response rejected", "node", r.GetNode().GetId(), "stream", id,
					"type", r.GetTypeUrl(), "err", r.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamClosedFunc: func(id int64, n *corev3.Node) {
			s.log.Debug("xDS stream closed", "node", n.GetId(), "stream", id)
		},
		DeltaStreamClosedFunc: func(id int64, n *corev3.Node) {
			s.log.Debug("xDS delta stream closed", "node", n.GetId(), "stream", id)
		},
	}
}

// xdsLogger sends go-control-plane's own logs to slog. Its warnings are steps of the protocol
// (an EDS request waiting for the client to name the new clusters), so they go to debug.
func xdsLogger(l *slog.Logger) xdslog.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			l.Log(context.Background(), level, fmt.Sprintf(format, args...))
		}
	}
	return xdslog.LoggerFuncs{DebugFunc: at(slog.LevelDebug), InfoFunc: at(slog.LevelDebug),
		WarnFunc: at(slog.LevelDebug), ErrorFunc: at(slog.LevelError)}
}
