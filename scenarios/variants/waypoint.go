package variants

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/pki"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// WaypointForLabel is set on a waypoint's pod to the name of the service it serves.
const WaypointForLabel = "onehop.dev/waypoint-for"

// WaypointNode is where waypoint pods run unless told otherwise.
const WaypointNode = "n1"

// Waypoint is an L7 proxy for one service, as an Istio waypoint: HAProxy in mode http in a pod of
// its own (component "waypoint", in the service's namespace, on node n1) that takes the
// service's traffic on the service's ports and balances every HTTP request round-robin over the
// service's ready endpoints, on pooled connections. It follows the lab's service store (new
// endpoints, new ports) until Stop.
//
// A waypoint's pod carries istio.io/dataplane-mode=none, so no ambient node proxy captures the
// waypoint's own traffic, as in Istio.
type Waypoint struct {
	Namespace, Service string

	c     clusters.Cluster
	rt    string
	pod   clusters.Pod
	dir   string
	mtls  bool
	certs pki.Workload // set when the waypoint has a certificate (mTLS listener, or TLS upstreams)
	ca    bool         // this waypoint created the lab CA
	proxy *HAProxy
	// upstream, when set, says how to reach an endpoint (ambient: through the destination node
	// proxy's tunnel), or (false) to leave it out; nil: plaintext to the pod IP and target port.
	upstream func(ep services.Endpoint, ip netip.Addr, target uint16) (upstreamServer, bool)
	// editConfig, when set, edits the rendered config before it is checked (tests).
	editConfig func(cfg []byte) []byte

	mu       sync.Mutex // guards ports and the proxy's config against concurrent syncs
	ports    []uint16   // the service ports the waypoint listens on
	follower *follower  // re-syncs after store changes
}

// upstreamServer is where a waypoint (or a node proxy) sends one endpoint's connections.
type upstreamServer struct {
	Addr string // host:port
	// SNI, when set, makes the connection mutual TLS (lab CA) with this SNI: the ambient tunnel,
	// where the SNI names the final endpoint.
	SNI string
}

// waypointOptions are DeployWaypoint's settings; the ambient variant sets the unexported ones.
type waypointOptions struct {
	node       string
	mtls       bool
	follow     bool // re-sync on every store change by itself
	upstream   func(ep services.Endpoint, ip netip.Addr, target uint16) (upstreamServer, bool)
	editConfig func(cfg []byte) []byte
}

// DeployWaypoint creates a waypoint for service ns/service: a pod named after the service on
// node n1, HAProxy in it listening on the service's TCP ports and balancing HTTP requests over
// the service's endpoints (plaintext, pod IP and target port). With mtls the listeners take only
// mutual TLS from certificates of the lab CA (chain verified; HAProxy 2.6 cannot check the
// SPIFFE ID); without it they take plaintext HTTP. It returns once the waypoint listens. The
// caller sends the service's traffic to Addr (or AddrFor a port) and Stops it when done.
func DeployWaypoint(ctx context.Context, c clusters.Cluster, ns, service string, mtls bool) (*Waypoint, error) {
	return deployWaypoint(ctx, c, ns, service, waypointOptions{node: WaypointNode, mtls: mtls, follow: true})
}

func deployWaypoint(ctx context.Context, c clusters.Cluster, ns, service string, o waypointOptions) (w *Waypoint, err error) {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return nil, fmt.Errorf("waypoint of %s/%s: the %s provider does not run the lab's pods; deploy an Istio waypoint instead", ns, service, c.Provider())
	}
	if _, err := HAProxyVersion(); err != nil {
		return nil, fmt.Errorf("waypoint of %s/%s: %w", ns, service, err)
	}
	svc, ok := c.Services().Snapshot().Service(ns, service)
	if !ok {
		return nil, fmt.Errorf("waypoint of %s/%s: no such service", ns, service)
	}
	if len(serviceTCPPorts(svc)) == 0 {
		return nil, fmt.Errorf("waypoint of %s/%s: the service has no TCP port", ns, service)
	}
	if o.node == "" {
		o.node = WaypointNode
	}
	name := waypointPodName(ns, service)
	w = &Waypoint{Namespace: ns, Service: service, c: c, rt: h.RuntimeDir(), mtls: o.mtls, upstream: o.upstream,
		editConfig: o.editConfig, dir: filepath.Join(h.RuntimeDir(), "waypoint", name)}
	defer func() {
		if err != nil {
			w.stop(context.WithoutCancel(ctx), name)
			if !strings.HasPrefix(err.Error(), w.describe(name)) { // the proxy's errors name it already
				err = fmt.Errorf("%s: %w", w.describe(name), err)
			}
		}
	}()
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return w, err
	}
	if w.pod, err = c.CreatePod(ctx, clusters.PodSpec{Name: name, Namespace: ns, Node: o.node, Component: "waypoint",
		Labels: map[string]string{DataplaneModeLabel: "none", WaypointForLabel: service}}); err != nil {
		return w, fmt.Errorf("create its pod: %w", err)
	}
	if w.mtls || w.upstream != nil {
		ca, created, err := loadLabCA(w.rt)
		if err != nil {
			return w, err
		}
		w.ca = created
		// Istio's waypoint identity is its own service account, named after the waypoint.
		if w.certs, err = ca.Issue(w.certDir(), pki.Identity(ns, name), []string{name}, 0); err != nil {
			return w, fmt.Errorf("issue its certificate: %w", err)
		}
	}
	w.proxy = &HAProxy{
		Name:   w.describe(name),
		Config: filepath.Join(w.dir, "haproxy.cfg"),
		Admin:  filepath.Join(w.dir, "admin.sock"),
		Start: func(ctx context.Context, argv []string) (*clusters.Process, error) {
			return c.Start(ctx, name, clusters.Command{Name: "waypoint", Argv: argv, Detach: true})
		},
	}
	w.mu.Lock()
	err = w.syncLocked(ctx, c.Services().Snapshot(), true)
	w.mu.Unlock()
	if err != nil {
		return w, err
	}
	if o.follow {
		changes := c.Services().Watch()
		w.follower = follow(changes, "waypoint "+w.proxy.Name, w.Sync)
	}
	return w, nil
}

func (w *Waypoint) describe(pod string) string {
	return fmt.Sprintf("waypoint of service %s/%s (pod %s)", w.Namespace, w.Service, pod)
}

func (w *Waypoint) certDir() string { return filepath.Join(w.rt, "pki", w.pod.Name) }

// waypointPodName names a service's waypoint pod: "<namespace>-<service>-wp", or a hashed name
// when that is longer than a lab pod name may be (40).
func waypointPodName(ns, service string) string {
	if n := ns + "-" + service + "-wp"; len(n) <= 40 {
		return n
	}
	sum := sha256.Sum256([]byte(ns + "/" + service))
	n := "wp-" + hex.EncodeToString(sum[:4]) + "-" + service
	if len(n) > 40 {
		n = n[:40]
	}
	return strings.TrimRight(n, "-")
}

// Pod is the waypoint's pod.
func (w *Waypoint) Pod() clusters.Pod { return w.pod }

// Addr is where the waypoint takes the service's first TCP port.
func (w *Waypoint) Addr() netip.AddrPort {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ports) == 0 || len(w.pod.IPs) == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(w.pod.IPs[0], w.ports[0])
}

// AddrFor is where the waypoint takes the given service port.
func (w *Waypoint) AddrFor(port uint16) (netip.AddrPort, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.ports {
		if p == port && len(w.pod.IPs) > 0 {
			return netip.AddrPortFrom(w.pod.IPs[0], p), true
		}
	}
	return netip.AddrPort{}, false
}

// MTLS says whether the waypoint's listeners take only mutual TLS.
func (w *Waypoint) MTLS() bool { return w.mtls }

// Proxy is the waypoint's HAProxy (admin socket, stats).
func (w *Waypoint) Proxy() *HAProxy { return w.proxy }

// Requests is the number of HTTP requests the waypoint has taken since its proxy (re)started,
// over all its listeners.
func (w *Waypoint) Requests() (int, error) {
	stats, err := w.proxy.ShowStat()
	if err != nil {
		return 0, err
	}
	n, found := 0, false
	for _, s := range stats {
		if s["svname"] == "FRONTEND" && strings.HasPrefix(s["pxname"], "port-") {
			v, err := strconv.Atoi(s["req_tot"])
			if err != nil {
				return 0, fmt.Errorf("%s: req_tot of %s: %q", w.proxy.Name, s["pxname"], s["req_tot"])
			}
			n, found = n+v, true
		}
	}
	if !found {
		return 0, fmt.Errorf("%s: no listener in show stat", w.proxy.Name)
	}
	return n, nil
}

// Sync renders the waypoint's config from the current service store and reloads it if it
// changed. A waypoint deployed with DeployWaypoint does this by itself on every store change.
func (w *Waypoint) Sync(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.syncLocked(ctx, w.c.Services().Snapshot(), false)
}

// syncLocked writes the config and starts the proxy (first) or reloads it (config changed, or
// the proxy is not running any more: it is started again).
func (w *Waypoint) syncLocked(ctx context.Context, snap services.Snapshot, first bool) error {
	svc, ok := snap.Service(w.Namespace, w.Service)
	if !ok {
		if first {
			return errors.New("the service is gone")
		}
		return nil // keep serving the last config; whoever deployed the waypoint stops it
	}
	ports := serviceTCPPorts(svc)
	var pnums []uint16
	for _, p := range ports {
		pnums = append(pnums, p.Port)
	}
	cfg := w.config(svc, ports)
	changed, err := w.proxy.WriteConfig(ctx, cfg)
	if err != nil {
		return err
	}
	w.ports = pnums
	w.proxy.Ports = nil
	for _, p := range pnums {
		w.proxy.Ports = append(w.proxy.Ports, int(p))
	}
	switch {
	case first || !w.proxy.Running():
		return w.proxy.Run(ctx)
	case changed:
		return w.proxy.Reload(ctx)
	}
	return nil
}

// serviceTCPPorts lists a service's TCP ports.
func serviceTCPPorts(svc services.ServiceView) []services.Port {
	var out []services.Port
	for _, p := range svc.Ports {
		if p.Protocol != "UDP" {
			out = append(out, p)
		}
	}
	return out
}

type waypointPort struct {
	Port    uint16
	Servers []string // "name addr [options]"
}

var waypointTemplate = template.Must(template.New("haproxy.cfg").Parse(`# Waypoint of service {{.Service}}, rendered by onehop from the lab's service store.
global
    nbthread 2
    stats socket {{.Admin}} mode 600 level admin expose-fd listeners
    # an old worker finishes its requests after a reload for at most Istio's drainDuration
    hard-stop-after 45s

defaults
    mode http
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch
    # connections to an endpoint are pooled and shared by all requests, as Envoy does
    http-reuse always
{{range .Ports}}
# Service port {{.Port}}: every HTTP request is balanced on its own.{{if $.MTLS}} Only mutual TLS
# from a certificate of the lab CA gets in ("verify required" checks the chain; HAProxy 2.6
# cannot match the peer's SPIFFE ID).{{end}}
frontend port-{{.Port}}
    bind :{{.Port}}{{if $.MTLS}} ssl crt {{$.Cert}} ca-file {{$.CA}} verify required{{end}}
    default_backend endpoints-{{.Port}}

backend endpoints-{{.Port}}
    balance roundrobin
{{- range .Servers}}
    server {{.}}
{{- end}}
{{end}}`))

// config renders the waypoint's HAProxy config for the service's ready IPv4 endpoints.
func (w *Waypoint) config(svc services.ServiceView, ports []services.Port) []byte {
	data := struct {
		Service, Admin, Cert, CA string
		MTLS                     bool
		Ports                    []waypointPort
	}{Service: svc.Key(), Admin: w.proxy.Admin, Cert: w.certs.Combined, CA: w.certs.CA, MTLS: w.mtls}
	for _, p := range ports {
		wp := waypointPort{Port: p.Port}
		for _, ep := range svc.Endpoints {
			for _, ip := range ep.IPs {
				if !ep.Ready || !ip.Is4() {
					continue
				}
				up := upstreamServer{Addr: netip.AddrPortFrom(ip, p.TargetPort).String()}
				if w.upstream != nil {
					var ok bool
					if up, ok = w.upstream(ep, ip, p.TargetPort); !ok {
						continue
					}
				}
				line := ep.Pod + " " + up.Addr
				if up.SNI != "" {
					line += fmt.Sprintf(" ssl sni str(%s) crt %s ca-file %s verify required", up.SNI, w.certs.Combined, w.certs.CA)
				}
				wp.Servers = append(wp.Servers, line)
			}
		}
		data.Ports = append(data.Ports, wp)
	}
	var b bytes.Buffer
	if err := waypointTemplate.Execute(&b, data); err != nil {
		panic(err) // the template is fixed: an error is a bug
	}
	if w.editConfig != nil {
		return w.editConfig(b.Bytes())
	}
	return b.Bytes()
}

// Stop stops the waypoint's proxy, deletes its pod and removes its files (config, certificate,
// and the lab CA if the waypoint created it and nothing else uses it).
func (w *Waypoint) Stop(ctx context.Context) error {
	w.follower.stop()
	w.follower = nil
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.stop(ctx, w.pod.Name); err != nil {
		return fmt.Errorf("%s: stop: %w", w.describe(w.pod.Name), err)
	}
	return nil
}

func (w *Waypoint) stop(ctx context.Context, pod string) error {
	var errs []error
	if w.proxy != nil && w.proxy.Process() != nil {
		if err := w.proxy.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if pod != "" {
		if err := w.c.DeletePod(ctx, pod); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{w.dir, filepath.Join(w.rt, "pki", pod)} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	os.Remove(filepath.Join(w.rt, "waypoint")) // only if empty: other waypoints may use it
	if w.ca {
		if err := dropLabCA(w.rt); err != nil {
			errs = append(errs, err)
		}
		w.ca = false
	}
	return errors.Join(errs...)
}

// loadLabCA loads the lab CA (in <runtime dir>/pki/ca), creating it if no variant did yet;
// created says this call created it.
func loadLabCA(rt string) (ca *pki.CA, created bool, err error) {
	dir := filepath.Join(rt, "pki")
	// 0711, as the sidecar variant makes it: its proxies (uid 1337) traverse it.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, false, err
	}
	_, err = os.Stat(filepath.Join(dir, "ca", "ca.pem"))
	created = errors.Is(err, os.ErrNotExist)
	if ca, err = pki.LoadOrCreate(filepath.Join(dir, "ca")); err != nil {
		return nil, false, fmt.Errorf("lab CA: %w", err)
	}
	return ca, created, nil
}

// dropLabCA removes the lab's pki directory if nothing but the CA is left in it.
func dropLabCA(rt string) error {
	dir := filepath.Join(rt, "pki")
	if entries, _ := os.ReadDir(dir); len(entries) == 1 && entries[0].Name() == "ca" {
		return os.RemoveAll(dir)
	}
	return nil
}
