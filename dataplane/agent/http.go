// Package agent wires the onehop agent together: the xDS client feeds the kernel datapath, and
// an HTTP surface reports health, readiness and metrics and takes pod enrollment.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/enrollment"
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
)

// Enroller is the part of the datapath that decides which pods it serves.
type Enroller interface {
	Enroll(cookie uint64, o datapath.NetnsOptions) error
	Unenroll(cookie uint64) error
	Enrolled() ([]uint64, error)
}

// Server is the agent's HTTP surface:
//
//	GET  /healthz  200 while the programs are attached
//	GET  /readyz   200 once everything of the config that can be programmed is programmed
//	GET  /metrics  Prometheus metrics
//	GET  /status   JSON summary: ready, what Status and Config return (cheap enough to poll)
//	GET  /services JSON: every service of the config, programmed or not, and why (walks them all)
//	POST /enroll   {"netns": "/run/netns/x", "telemetry": true, "access_log": false, "pod": {...}}:
//	               serve that pod's connections (options default to Defaults; pod labels metrics)
//	DELETE /enroll {"netns": ...}: stop serving them; GET /enroll lists enrolled namespaces
type Server struct {
	Enroller Enroller
	// Defaults are the options of an enrollment that does not say.
	Defaults datapath.NetnsOptions
	// OnEnroll, if set, learns each enrollment change (the telemetry's pods).
	OnEnroll func(e Enrollment, on bool)
	// StateFile, if set, keeps the enrollments across agent restarts (the kernel keeps which
	// namespaces are enrolled; this keeps their paths and pod metadata).
	StateFile string
	Ready     func() bool
	Healthy   func() error
	Status    func() any // optional: what /status reports beside readiness, as "programmed"
	Config    func() any // optional: the control plane side (identity, rejected services, ...), as "xds"
	Services  func() any // optional: GET /services
	Registry  *prometheus.Registry
	Log       *slog.Logger

	mu       sync.Mutex
	enrolled map[string]Enrollment // by netns path
}

// Enrollment is one enrolled pod, as /enroll took it.
type Enrollment struct {
	Netns   string                `json:"netns"`
	Cookie  uint64                `json:"cookie"`
	Options datapath.NetnsOptions `json:"options"`
	Pod     *telemetry.Workload   `json:"pod,omitempty"`
	PodIPs  []netip.Addr          `json:"pod_ips,omitempty"`
	// Owner is who enrolled it when that was not the admin API: Kubernetes mode marks its own
	// (dataplane/kube), so that after a restart it knows which enrollments to re-check.
	Owner string `json:"owner,omitempty"`
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
	Netns     string              `json:"netns"`
	Telemetry *bool               `json:"telemetry,omitempty"`  // default: Server.Defaults
	AccessLog *bool               `json:"access_log,omitempty"` // default: Server.Defaults
	Sockmap   *bool               `json:"sockmap,omitempty"`    // accelerate same-node connections; default: Server.Defaults
	Sidecar   bool                `json:"sidecar,omitempty"`    // a sidecar proxy intercepts the pod's traffic (datapath.NetnsOptions)
	Pod       *telemetry.Workload `json:"pod,omitempty"`        // who the pod is, for metric labels
	PodIPs    []netip.Addr        `json:"pod_ips,omitempty"`    // its addresses: its peers on this node know it by them
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
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	return mux
}

func (s *Server) enroll(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Netns == "" {
			http.Error(w, `body must be {"netns": "<path of the pod's network namespace>"} with optional "telemetry", "access_log", "sockmap", "sidecar" (booleans) and "pod" (name, namespace, app, version, ...)`, http.StatusBadRequest)
			return
		}
		cookie, err := enrollment.Cookie(req.Netns)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		e := Enrollment{Netns: req.Netns, Cookie: cookie, Options: s.Defaults, Pod: req.Pod, PodIPs: req.PodIPs}
		if req.Telemetry != nil {
			e.Options.Telemetry = *req.Telemetry
		}
		if req.AccessLog != nil {
			e.Options.AccessLog = *req.AccessLog
		}
		if req.Sockmap != nil {
			e.Options.Sockmap = *req.Sockmap
		}
		e.Options.Sidecar = req.Sidecar
		if err := s.Apply(e, on); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d\n", cookie)
	}
}

// Apply enrolls (on) or unenrolls e as POST and DELETE /enroll do (the kernel's map, OnEnroll,
// the state file), for callers inside the agent (Kubernetes mode). It takes e.Cookie as it is
// rather than resolving e.Netns again: a deleted pod's namespace path no longer resolves, and
// what the kernel holds is the cookie. Enrollments are kept by e.Netns.
func (s *Server) Apply(e Enrollment, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.enrolled == nil {
		s.enrolled = map[string]Enrollment{}
	}
	var err error
	if on {
		err = s.Enroller.Enroll(e.Cookie, e.Options)
		if err == nil {
			s.enrolled[e.Netns] = e
		}
	} else {
		err = s.Enroller.Unenroll(e.Cookie)
		delete(s.enrolled, e.Netns)
	}
	if err != nil {
		return fmt.Errorf("netns %s (cookie %d): %w", e.Netns, e.Cookie, err)
	}
	if s.OnEnroll != nil {
		s.OnEnroll(e, on)
	}
	if err := s.save(); err != nil {
		s.Log.Warn("enrollment state not saved: a restarted agent will not know this pod's metadata", "file", s.StateFile, "err", err)
	}
	s.Log.Info("enrollment", "netns", e.Netns, "cookie", e.Cookie, "enrolled", on, "telemetry", e.Options.Telemetry, "access_log", e.Options.AccessLog,
		"sockmap", e.Options.Sockmap, "sidecar", e.Options.Sidecar, "owner", e.Owner)
	return nil
}

// Enrollments returns a copy of the enrollments, sorted by netns path.
func (s *Server) Enrollments() []Enrollment {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]Enrollment, 0, len(s.enrolled))
	for _, e := range s.enrolled {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Netns < list[j].Netns })
	return list
}

// save writes the enrollments to StateFile (whole, by rename). Called with s.mu held.
func (s *Server) save() error {
	if s.StateFile == "" {
		return nil
	}
	list := make([]Enrollment, 0, len(s.enrolled))
	for _, e := range s.enrolled {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Netns < list[j].Netns })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.StateFile)
}

// Restore reads StateFile, left by an earlier agent, and takes back the enrollments the
// kernel still holds (its pinned oh_enrolled), telling OnEnroll of each. A missing file is
// not an error: nothing was enrolled, or nothing was pinned.
func (s *Server) Restore() (int, error) {
	if s.StateFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(s.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var list []Enrollment
	if err := json.Unmarshal(b, &list); err != nil {
		return 0, fmt.Errorf("%s: %w", s.StateFile, err)
	}
	cookies, err := s.Enroller.Enrolled()
	if err != nil {
		return 0, err
	}
	inKernel := map[uint64]bool{}
	for _, c := range cookies {
		inKernel[c] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.enrolled == nil {
		s.enrolled = map[string]Enrollment{}
	}
	for _, e := range list {
		if !inKernel[e.Cookie] {
			continue // unenrolled meanwhile, or the pins were removed
		}
		s.enrolled[e.Netns] = e
		if s.OnEnroll != nil {
			s.OnEnroll(e, true)
		}
	}
	return len(s.enrolled), s.save()
}
