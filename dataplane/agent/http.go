// Package agent wires the onehop agent together: the xDS client feeds the kernel datapath, and
// an HTTP surface reports health, readiness and metrics and takes pod enrollment.
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/onehop-mesh/onehop/dataplane/enrollment"
)

// Enroller is the part of the datapath that decides which pods it serves.
type Enroller interface {
	Enroll(cookie uint64) error
	Unenroll(cookie uint64) error
}

// Server is the agent's HTTP surface:
//
//	GET  /healthz  200 while the programs are attached
//	GET  /readyz   200 once everything of the config that can be programmed is programmed
//	GET  /metrics  Prometheus metrics
//	GET  /status   JSON summary: ready, what Status and Config return (cheap enough to poll)
//	GET  /services JSON: every service of the config, programmed or not, and why (walks them all)
//	POST /enroll   {"netns": "/run/netns/x"}: serve that pod's connections
//	DELETE /enroll {"netns": ...}: stop serving them; GET /enroll lists enrolled namespaces
type Server struct {
	Enroller Enroller
	Ready    func() bool
	Healthy  func() error
	Status   func() any // optional: what /status reports beside readiness, as "programmed"
	Config   func() any // optional: the control plane side (identity, rejected services, ...), as "xds"
	Services func() any // optional: GET /services
	Registry *prometheus.Registry
	Log      *slog.Logger

	mu       sync.Mutex
	enrolled map[string]uint64 // netns path -> cookie
}

// Client talks HTTP to an agent over its admin unix socket (the host part of URLs is ignored).
func Client(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

// StatusReply is the body of /status.
type StatusReply struct {
	Ready      bool `json:"ready"`
	Programmed any  `json:"programmed,omitempty"`
	XDS        any  `json:"xds,omitempty"`
}

// EnrollRequest is the body of /enroll.
type EnrollRequest struct {
	Netns string `json:"netns"`
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			http.Error(w, "waiting for a complete xDS config to be programmed (GET /status tells what is missing or rejected)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		st := StatusReply{Ready: s.Ready()}
		if s.Status != nil {
			st.Programmed = s.Status()
		}
		if s.Config != nil {
			st.XDS = s.Config()
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /services", func(w http.ResponseWriter, _ *http.Request) {
		if s.Services == nil {
			http.Error(w, "no service list", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.Services())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /enroll", s.enroll(true))
	mux.HandleFunc("DELETE /enroll", s.enroll(false))
	mux.HandleFunc("GET /enroll", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		out := []string{}
		for ns := range s.enrolled {
			out = append(out, ns)
		}
		s.mu.Unlock()
		sort.Strings(out)
		json.NewEncoder(w).Encode(out)
	})
	return mux
}

func (s *Server) enroll(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Netns == "" {
			http.Error(w, `body must be {"netns": "<path of the pod's network namespace>"}`, http.StatusBadRequest)
			return
		}
		cookie, err := enrollment.Cookie(req.Netns)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.enrolled == nil {
			s.enrolled = map[string]uint64{}
		}
		if on {
			err = s.Enroller.Enroll(cookie)
			if err == nil {
				s.enrolled[req.Netns] = cookie
			}
		} else {
			err = s.Enroller.Unenroll(cookie)
			delete(s.enrolled, req.Netns)
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("netns %s (cookie %d): %v", req.Netns, cookie, err), http.StatusInternalServerError)
			return
		}
		s.Log.Info("enrollment", "netns", req.Netns, "cookie", cookie, "enrolled", on)
		fmt.Fprintf(w, "%d\n", cookie)
	}
}
