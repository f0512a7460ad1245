package variants

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/pki"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// AmbientMode is the DataplaneModeLabel value that enrolls a namespace in the ambient variants.
const AmbientMode = "ambient"

// UseWaypointLabel on an ambient namespace sends its services' traffic through waypoints, as
// Istio's istio.io/use-waypoint. It tells the ambient-waypoint variant's namespace from the
// ambient variant's.
const UseWaypointLabel = "istio.io/use-waypoint"

// Ambient ports are ztunnel's: the in-pod outbound capture port and the HBONE tunnel port.
const (
	ZtunnelOutboundPort = 15001
	HBONEPort           = 15008
	// HBONEPortWaypoint is the ambient-waypoint variant's tunnel port: both variants run side by
	// side in one lab (each with its own node proxies), so they cannot share the node's 15008.
	HBONEPortWaypoint = 15009
)

// ztunnelDomain is the DNS suffix of the tunnel's SNI names: "<port>-<pod>.<node>.<suffix>".
// Each node proxy's certificate holds "*.<node>.<suffix>", so the name in the SNI is both the
// final endpoint and the node whose proxy must answer.
const ztunnelDomain = "ztunnel." + pki.TrustDomain

// Ambient is Istio's ambient architecture at L4 with HAProxy as ztunnel: one node proxy per
// node (in the node's network namespace, a cgroup of its own) captures the outgoing TCP
// connections of every enrolled pod inside the pod's network namespace (an iptables REDIRECT in
// the pod to a listener the node proxy holds in the pod's namespace, as ztunnel's in-pod mode),
// resolves the original destination (a service VIP and port to one of its endpoints, balanced
// round-robin per connection; an enrolled pod's IP as it is) and carries the connection over
// mutual TLS to the node proxy of the endpoint's node, which hands it to the pod. Destinations
// outside the mesh get a plaintext connection from the node.
//
// With Waypoints, the namespaces' services get an L7 waypoint each (see Waypoint): the source
// node proxy sends a service's connections to its waypoint over mutual TLS, and the waypoint
// balances each HTTP request over the endpoints through their node proxies' tunnels.
type Ambient struct {
	Waypoints bool
	// WaypointFor, with Waypoints, picks the services of the enrolled namespaces that get a
	// waypoint (nil: all of them, as istio.io/use-waypoint on the namespace does).
	WaypointFor func(svc services.ServiceView) bool

	// editConfig, when set, edits a node's rendered config before it is checked (tests).
	editConfig func(node string, cfg []byte) []byte

	mu        sync.Mutex
	rt        string
	nodes     map[string]*nodeProxy // by node; nil: not installed
	mesh      map[string]clusters.Pod
	captured  map[string]uint64    // pods whose capture rules are installed -> their netns inode
	leaving   map[string]bool      // pods RemovePod took out, until they are gone
	waypoints map[string]*Waypoint // by service key
	ca        *pki.CA
	createdCA bool
	follower  *follower // re-syncs after store changes
}

// nodeProxy is one node's ztunnel.
type nodeProxy struct {
	node  string
	addr  netip.Addr
	dir   string
	certs pki.Workload
	proxy *HAProxy
}

func init() {
	RegisterNetns(func(clusters.Cluster) NetnsVariant { return &Ambient{} })
	RegisterNetns(func(clusters.Cluster) NetnsVariant { return &Ambient{Waypoints: true} })
}

func (a *Ambient) Name() string {
	if a.Waypoints {
		return "ambient-waypoint"
	}
	return "ambient"
}

// daemon is the node proxy's component name in CPU reports.
func (a *Ambient) daemon() string {
	if a.Waypoints {
		return "ztunnel-waypoint"
	}
	return "ztunnel"
}

func (a *Ambient) tunnelPort() int {
	if a.Waypoints {
		return HBONEPortWaypoint
	}
	return HBONEPort
}

func (a *Ambient) Describe() string {
	v, err := HAProxyVersion()
	if err != nil {
		v = "(not installed: run `make deps`)"
	}
	d := fmt.Sprintf("Istio ambient architecture: one HAProxy %s per node as ztunnel (L4, mode tcp), in-pod iptables REDIRECT to a listener the node proxy holds in each pod's netns, "+
		"mTLS between node proxies (lab CA, TLS tunnel on :%d with the endpoint in the SNI; chain and node name verified, SPIFFE ID not checked)", v, a.tunnelPort())
	if a.Waypoints {
		d += fmt.Sprintf("; plus an L7 waypoint per service (HAProxy %s, mode http, own pod on n1), mTLS from the node proxy to the waypoint and from the waypoint through the destination node proxy's tunnel", v)
	}
	return d
}

func (a *Ambient) Labels() map[string]string {
	if a.Waypoints {
		return map[string]string{DataplaneModeLabel: AmbientMode, UseWaypointLabel: "waypoint"}
	}
	return map[string]string{DataplaneModeLabel: AmbientMode}
}

// enrolls says whether this variant enrolls the pods of a namespace.
func (a *Ambient) enrolls(ns clusters.Namespace) bool {
	return ns.Labels[DataplaneModeLabel] == AmbientMode && (ns.Labels[UseWaypointLabel] != "") == a.Waypoints
}

func (a *Ambient) enrolledNamespaces(c clusters.Cluster) map[string]bool {
	out := map[string]bool{}
	for _, ns := range c.Spec().Namespaces {
		if a.enrolls(ns) {
			out[ns.Name] = true
		}
	}
	return out
}

// Install starts a node proxy on every node, captures the enrolled pods' traffic (and deploys
// the waypoints) and follows the service store from then on.
func (a *Ambient) Install(ctx context.Context, c clusters.Cluster) (err error) {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("%s: the %s provider does not run its own nodes; install Istio ambient and label the namespace %s=%s instead", a.Name(), c.Provider(), DataplaneModeLabel, AmbientMode)
	}
	if _, err := HAProxyVersion(); err != nil {
		return fmt.Errorf("%s: %w", a.Name(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nodes != nil {
		return fmt.Errorf("%s: already installed; uninstall it first", a.Name())
	}
	a.rt, a.nodes, a.mesh, a.captured, a.leaving, a.waypoints = h.RuntimeDir(), map[string]*nodeProxy{}, map[string]clusters.Pod{}, map[string]uint64{}, map[string]bool{}, map[string]*Waypoint{}
	defer func() {
		if err != nil {
			a.teardown(context.WithoutCancel(ctx), c)
		}
	}()
	if a.ca, a.createdCA, err = loadLabCA(a.rt); err != nil {
		return fmt.Errorf("%s: %w", a.Name(), err)
	}
	changes := c.Services().Watch() // before the first sync, so no change falls in between
	if err := a.sync(ctx, c, h, true); err != nil {
		return fmt.Errorf("%s: %w", a.Name(), err)
	}
	a.follower = follow(changes, a.Name()+" node proxies", func(ctx context.Context) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.sync(ctx, c, h, false)
	})
	return nil
}

func (a *Ambient) dir() string                { return filepath.Join(a.rt, a.Name()) }
func (a *Ambient) certDir(node string) string { return filepath.Join(a.rt, "pki", a.daemon()+"-"+node) }

// prepareNode makes a node proxy's directory and certificate; the proxy is not started yet.
func (a *Ambient) prepareNode(c clusters.Cluster, h clusters.NodeHost, node string) (*nodeProxy, error) {
	fail := func(err error) (*nodeProxy, error) { return nil, fmt.Errorf("node proxy of node %s: %w", node, err) }
	var addr netip.Addr
	for _, ip := range h.NodeAddresses(node) {
		if ip.Is4() {
			addr = ip
			break
		}
	}
	if !addr.IsValid() {
		return fail(errors.New("the node has no IPv4 address (HAProxy reads the original destination of IPv4 connections only)"))
	}
	np := &nodeProxy{node: node, addr: addr, dir: filepath.Join(a.dir(), node)}
	if err := os.MkdirAll(np.dir, 0o755); err != nil {
		return fail(err)
	}
	var err error
	// Every ztunnel has Istio's ztunnel identity; the DNS name is the node's SNI domain.
	if np.certs, err = a.ca.Issue(a.certDir(node), pki.Identity("istio-system", "ztunnel"), []string{"*." + node + "." + ztunnelDomain}, 0); err != nil {
		return fail(fmt.Errorf("issue its certificate: %w", err))
	}
	np.proxy = &HAProxy{
		Name:   "node proxy of node " + node,
		Config: filepath.Join(np.dir, "haproxy.cfg"),
		Admin:  filepath.Join(np.dir, "admin.sock"),
		Ports:  []int{a.tunnelPort()},
		Start: func(ctx context.Context, argv []string) (*clusters.Process, error) {
			return h.StartOnNode(ctx, node, clusters.Command{Name: a.daemon(), Argv: argv, Detach: true})
		},
	}
	return np, nil
}

// netnsInode identifies a network namespace (a pod deleted and created again has a new one).
func netnsInode(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// sync makes the node proxies match the lab. Order matters for traffic: a proxy listens in a pod
// before the pod's capture rules send anything there, and the rules go before the listener; a
// waypoint serves before any node proxy routes to it, and stops after none does.
func (a *Ambient) sync(ctx context.Context, c clusters.Cluster, h clusters.NodeHost, installing bool) error {
	var errs []error
	for _, node := range c.Spec().NodeNames() {
		if a.nodes[node] == nil {
			np, err := a.prepareNode(c, h, node)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			a.nodes[node] = np
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	// The mesh: every IPv4 pod of an enrolled namespace that did not opt out.
	enrolled := a.enrolledNamespaces(c)
	mesh := map[string]clusters.Pod{}
	present := map[string]bool{}
	for _, p := range c.Pods() {
		present[p.Name] = true
		if !enrolled[p.Namespace] || p.Labels[DataplaneModeLabel] == "none" || a.leaving[p.Name] || a.nodes[p.Node] == nil || ambientIPv4(p) == (netip.Addr{}) {
			continue
		}
		if netnsInode(h.NetnsPath(p.Name)) == 0 { // being deleted: HAProxy could not bind in it
			continue
		}
		mesh[p.Name] = p
	}
	for name := range a.leaving {
		if !present[name] {
			delete(a.leaving, name)
		}
	}
	// Pods that left the mesh (or whose namespace was replaced) lose their capture rules first.
	replaced := map[string]bool{}
	for name, ino := range a.captured {
		_, ok := mesh[name]
		if ok && netnsInode(h.NetnsPath(name)) == ino {
			continue
		}
		if present[name] && netnsInode(h.NetnsPath(name)) == ino {
			if err := a.uncapture(ctx, c, name); err != nil {
				errs = append(errs, err)
			}
		}
		delete(a.captured, name)
		if ok {
			replaced[name] = true
		}
	}
	a.mesh = mesh

	snap := c.Services().Snapshot()
	if len(replaced) > 0 {
		// On a reload HAProxy takes over the old process's listening sockets that match a bind
		// line (address and namespace name): a pod created again under its old name would keep
		// the socket in its deleted namespace. So the node first reloads without the pod, which
		// closes that socket, and then (below) with it, which binds one in the new namespace.
		a.mesh = map[string]clusters.Pod{}
		nodes := map[string]bool{}
		for name, p := range mesh {
			if replaced[name] {
				nodes[p.Node] = true
			} else {
				a.mesh[name] = p
			}
		}
		for _, node := range sortedNames(nodes) {
			if np := a.nodes[node]; np.proxy.Running() {
				changed, err := np.proxy.WriteConfig(ctx, a.config(np, snap))
				if err == nil && changed {
					err = np.proxy.Reload(ctx)
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
		a.mesh = mesh
	}

	var gone, kept []*Waypoint
	if a.Waypoints {
		var err error
		if kept, gone, err = a.syncWaypoints(ctx, c, snap, enrolled); err != nil {
			errs = append(errs, err)
		}
	}

	// Every config is checked before any proxy starts or reloads.
	type pending struct {
		np      *nodeProxy
		changed bool
	}
	var ok []pending
	failed := map[string]bool{} // nodes whose proxy does not serve this sync's config
	// Nodes that get new pods reload first, so their tunnels deliver to a new pod before another
	// node's proxy sends it anything.
	nodes, adding := a.sortedNodes(), map[string]bool{}
	for name, p := range mesh {
		if _, done := a.captured[name]; !done {
			adding[p.Node] = true
		}
	}
	sort.SliceStable(nodes, func(i, j int) bool { return adding[nodes[i]] && !adding[nodes[j]] })
	for _, node := range nodes {
		np := a.nodes[node]
		changed, err := np.proxy.WriteConfig(ctx, a.config(np, snap))
		if err != nil {
			errs = append(errs, err)
			failed[node] = true
			continue
		}
		ok = append(ok, pending{np, changed})
	}
	if len(errs) > 0 && installing { // a failing Install starts nothing
		return errors.Join(errs...)
	}
	for _, pd := range ok {
		var err error
		switch {
		case !pd.np.proxy.Running():
			err = pd.np.proxy.Run(ctx)
		case pd.changed:
			err = pd.np.proxy.Reload(ctx)
		}
		if err != nil {
			errs = append(errs, err)
			failed[pd.np.node] = true
		}
	}
	// The waypoints that were there follow their endpoints now that the node proxies deliver
	// to them (new ones were deployed, rendered from the same state, before any proxy routed to them).
	for _, w := range kept {
		if err := w.syncWith(ctx, snap); err != nil {
			errs = append(errs, err)
		}
	}
	// Capture the new pods whose node proxy now listens in them.
	for _, name := range sortedNames(mesh) {
		if _, done := a.captured[name]; done || failed[mesh[name].Node] || !a.nodes[mesh[name].Node].proxy.Running() {
			continue
		}
		if err := a.capture(ctx, c, name); err != nil {
			errs = append(errs, err)
			continue
		}
		a.captured[name] = netnsInode(h.NetnsPath(name))
	}
	for _, w := range gone {
		if err := w.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncWaypoints deploys a waypoint for every service that should have one and lacks it (or
// whose waypoint pod is gone) and returns the waypoints that were there already (the caller
// re-renders them) and those no longer wanted (the caller stops them once no node proxy routes
// to them).
func (a *Ambient) syncWaypoints(ctx context.Context, c clusters.Cluster, snap services.Snapshot, enrolled map[string]bool) (kept, gone []*Waypoint, err error) {
	var errs []error
	want := map[string]bool{}
	for _, svc := range snap.Services {
		if !enrolled[svc.Namespace] || len(serviceTCPPorts(svc)) == 0 || (a.WaypointFor != nil && !a.WaypointFor(svc)) {
			continue
		}
		want[svc.Key()] = true
		if w, ok := a.waypoints[svc.Key()]; ok {
			if p, exists := c.Pod(w.pod.Name); exists && p.Netns == w.pod.Netns {
				kept = append(kept, w)
				continue
			}
			w.Stop(ctx) // its pod was deleted under it
			delete(a.waypoints, svc.Key())
		}
		w, err := deployWaypoint(ctx, c, svc.Namespace, svc.Name, waypointOptions{node: WaypointNode, mtls: true, upstream: a.upstream})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a.waypoints[svc.Key()] = w
	}
	for key, w := range a.waypoints {
		if !want[key] {
			gone = append(gone, w)
			delete(a.waypoints, key)
		}
	}
	return kept, gone, errors.Join(errs...)
}

// syncWith re-renders a waypoint the ambient variant drives (its upstreams read the variant's
// state, which the caller holds).
func (w *Waypoint) syncWith(ctx context.Context, snap services.Snapshot) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.syncLocked(ctx, snap, false)
}

// upstream is how a waypoint reaches an endpoint: through the tunnel of the endpoint's node
// proxy when the endpoint is in the mesh, else plaintext; a pod RemovePod took out is
// terminating and gets nothing.
func (a *Ambient) upstream(ep services.Endpoint, ip netip.Addr, target uint16) (upstreamServer, bool) {
	if a.leaving[ep.Pod] {
		return upstreamServer{}, false
	}
	if p, ok := a.mesh[ep.Pod]; ok {
		return upstreamServer{Addr: netip.AddrPortFrom(a.nodes[p.Node].addr, uint16(a.tunnelPort())).String(), SNI: tunnelSNI(target, p)}, true
	}
	return upstreamServer{Addr: netip.AddrPortFrom(ip, target).String()}, true
}

// tunnelSNI names an endpoint for the destination node proxy: "<port>-<pod>.<node>.<domain>".
func tunnelSNI(port uint16, p clusters.Pod) string {
	return fmt.Sprintf("%d-%s.%s.%s", port, p.Name, p.Node, ztunnelDomain)
}

func ambientIPv4(p clusters.Pod) netip.Addr {
	for _, ip := range p.IPs {
		if ip.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

func (a *Ambient) sortedNodes() []string { return sortedNames(a.nodes) }

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ambientConfig is what a node proxy's config is rendered from.
type ambientConfig struct {
	Node, Variant      string
	Admin, Cert, CA    string
	Addr               netip.Addr
	OutboundPort       int
	TunnelPort         int
	Captured           []clusters.Pod // the node's mesh pods: a capture listener in each
	MeshIPs            string         // every mesh pod's IP, for direct pod-IP destinations
	MeshPods           []ambientBackend
	Services           []ambientBackend
	Local              []clusters.Pod // the node's mesh pods, as tunnel destinations
	SNIRegexp, SNIPort string
}

type ambientBackend struct {
	Name    string // backend name
	Comment string
	Servers []string // "name addr [options]"
}

var ambientTemplate = template.Must(template.New("haproxy.cfg").Parse(`# Node proxy (ztunnel) of node {{.Node}} for variant {{.Variant}}, rendered by onehop from the lab's service store.
global
    nbthread 2
    stats socket {{.Admin}} mode 600 level admin
    hard-stop-after 45s

defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch
{{if .Captured}}
# Outbound capture, as ztunnel's in-pod mode: a listener inside each enrolled pod's network
# namespace, where the pod's iptables REDIRECT sends its outgoing TCP connections. dst and
# dst_port are their original destination (SO_ORIGINAL_DST, read in the pod's namespace).
frontend outbound
{{- range .Captured}}
    bind 127.0.0.1:{{$.OutboundPort}} namespace {{.Netns}} name {{.Name}}
{{- end}}
    # loopback is never redirected: reached directly, the listener would proxy to itself
    tcp-request connection reject if { dst 127.0.0.0/8 }
{{- if .MeshIPs}}
    use_backend pod:%[dst] if { dst {{.MeshIPs}} }
{{- end}}
    use_backend out:%[dst]:%[dst_port]
    default_backend passthrough

# Neither a service nor a mesh pod: on to the original destination in plaintext, from the node.
backend passthrough
    server original 0.0.0.0
{{range .Services}}
# {{.Comment}}
backend {{.Name}}
    balance roundrobin
{{- range .Servers}}
    server {{.}}
{{- end}}
{{end}}
{{- range .MeshPods}}
# {{.Comment}}: to its node proxy, on the port the application asked for
backend {{.Name}}
{{- range .Servers}}
    server {{.}}
{{- end}}
{{end}}
{{- end}}
# Inbound tunnel, as ztunnel's HBONE port: mutual TLS from node proxies and waypoints with
# certificates of the lab CA ("verify required" checks the chain; HAProxy 2.6 cannot match the
# SPIFFE ID). The SNI names the endpoint, "<port>-<pod>.{{.Node}}.<domain>": the connection goes
# to that pod of this node (and no other) on that port, from the node.
frontend tunnel
    bind {{.Addr}}:{{.TunnelPort}} ssl crt {{.Cert}} ca-file {{.CA}} verify required
    acl endpoint ssl_fc_sni -m reg '{{.SNIRegexp}}'
    tcp-request content reject unless endpoint
    tcp-request content set-dst-port {{.SNIPort}}
    use_backend in:%[ssl_fc_sni,field(1,.),regsub(^[0-9]+-,)]
    default_backend unknown
{{range .Local}}
backend in:{{.Name}}
    server {{.Name}} {{index .IPs 0}}
{{end}}
# Not a mesh pod of this node.
backend unknown
    tcp-request content reject
`))

// config renders a node proxy's config from a snapshot of the service store. Every service of
// the lab is there (ztunnel knows them all), IPv4 only.
func (a *Ambient) config(np *nodeProxy, snap services.Snapshot) []byte {
	cfg := ambientConfig{Node: np.node, Variant: a.Name(), Admin: np.proxy.Admin, Cert: np.certs.Combined, CA: np.certs.CA,
		Addr: np.addr, OutboundPort: ZtunnelOutboundPort, TunnelPort: a.tunnelPort(),
		SNIRegexp: `^[0-9]{1,5}-[a-z0-9-]+[.]` + strings.ReplaceAll(np.node, ".", "[.]") + `[.]` + strings.ReplaceAll(ztunnelDomain, ".", "[.]") + `$`,
		SNIPort:   "ssl_fc_sni,field(1,.),field(1,-)"}
	tls := fmt.Sprintf("ssl crt %s ca-file %s verify required", np.certs.Combined, np.certs.CA)
	tunnel := func(p clusters.Pod) string {
		return fmt.Sprintf("%s:%d %s", a.nodes[p.Node].addr, a.tunnelPort(), tls)
	}
	var ips []string
	for _, name := range sortedNames(a.mesh) {
		p := a.mesh[name]
		ip := ambientIPv4(p)
		ips = append(ips, ip.String())
		if p.Node == np.node {
			cfg.Captured = append(cfg.Captured, p)
			cfg.Local = append(cfg.Local, clusters.Pod{PodSpec: clusters.PodSpec{Name: p.Name}, IPs: []netip.Addr{ip}})
		}
		// The port is the one the application connected to: the SNI is built per connection.
		cfg.MeshPods = append(cfg.MeshPods, ambientBackend{Name: "pod:" + ip.String(), Comment: "mesh pod " + p.Name,
			Servers: []string{fmt.Sprintf("%s %s sni dst_port,concat(-%s.%s.%s)", p.Name, tunnel(p), p.Name, p.Node, ztunnelDomain)}})
	}
	cfg.MeshIPs = strings.Join(ips, " ")
	for _, svc := range snap.Services {
		w := a.waypoints[svc.Key()]
		for _, vip := range svc.ClusterIPs {
			if !vip.Is4() {
				continue
			}
			for _, port := range serviceTCPPorts(svc) {
				b := ambientBackend{Name: fmt.Sprintf("out:%s:%d", vip, port.Port), Comment: fmt.Sprintf("%s:%d", svc.Key(), port.Port)}
				if w != nil {
					if addr, ok := w.AddrFor(port.Port); ok {
						// To the service's waypoint, which terminates the mutual TLS itself.
						b.Comment += " through its waypoint"
						b.Servers = append(b.Servers, fmt.Sprintf("%s %s %s verifyhost %s", w.pod.Name, addr, tls, w.pod.Name))
						cfg.Services = append(cfg.Services, b)
						continue
					}
				}
				for _, ep := range svc.Endpoints {
					for _, ip := range ep.IPs {
						if !ep.Ready || !ip.Is4() || a.leaving[ep.Pod] { // a leaving pod is terminating
							continue
						}
						if p, ok := a.mesh[ep.Pod]; ok {
							b.Servers = append(b.Servers, fmt.Sprintf("%s %s sni str(%s)", ep.Pod, tunnel(p), tunnelSNI(port.TargetPort, p)))
						} else {
							b.Servers = append(b.Servers, fmt.Sprintf("%s %s", ep.Pod, netip.AddrPortFrom(ip, port.TargetPort)))
						}
					}
				}
				cfg.Services = append(cfg.Services, b)
			}
		}
	}
	var b bytes.Buffer
	if err := ambientTemplate.Execute(&b, cfg); err != nil {
		panic(err) // the template is fixed: an error is a bug
	}
	if a.editConfig != nil {
		return a.editConfig(np.node, b.Bytes())
	}
	return b.Bytes()
}

// ambientStopGrace bounds a node proxy's stop in Restart (a SIGUSR1 soft-stop drains this long).
const ambientStopGrace = 5 * time.Second

// The capture chain in an enrolled pod's nat table.
const chainAmbientOutput = "ONEHOP-AMBIENT-OUTPUT"

var ambientJump = "-A OUTPUT -p tcp -j " + chainAmbientOutput

// captureRules is iptables-restore input sending the pod's outgoing TCP connections (but
// loopback ones) to the node proxy's listener in the pod.
func captureRules() string {
	return strings.Join([]string{
		"*nat",
		":" + chainAmbientOutput + " - [0:0]",
		"-A " + chainAmbientOutput + " -d 127.0.0.0/8 -j RETURN",
		"-A " + chainAmbientOutput + " -o lo -j RETURN", // the pod calling its own IP
		fmt.Sprintf("-A %s -p tcp -j REDIRECT --to-ports %d", chainAmbientOutput, ZtunnelOutboundPort),
		ambientJump,
		"COMMIT", "",
	}, "\n")
}

// capture installs the capture rules in a pod (replacing any left by an earlier install).
func (a *Ambient) capture(ctx context.Context, c clusters.Cluster, pod string) error {
	if err := a.uncapture(ctx, c, pod); err != nil {
		return err
	}
	if err := podRestore(ctx, c, pod, captureRules()); err != nil {
		return fmt.Errorf("%s: pod %s: install the capture rules: %w", a.Name(), pod, err)
	}
	return nil
}

// uncapture deletes exactly the jump and chain capture added to a pod, if any.
func (a *Ambient) uncapture(ctx context.Context, c clusters.Cluster, pod string) error {
	if err := podUnhook(ctx, c, pod, []string{chainAmbientOutput}, []string{ambientJump}); err != nil {
		return fmt.Errorf("%s: pod %s: remove the capture rules: %w", a.Name(), pod, err)
	}
	return nil
}

// AddPod captures a new pod of an enrolled namespace (its node proxy reloads with a listener in
// it first).
func (a *Ambient) AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("%s: the %s provider does not run its own nodes", a.Name(), c.Provider())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nodes == nil {
		return fmt.Errorf("%s: not installed", a.Name())
	}
	delete(a.leaving, pod.Name)
	return a.sync(ctx, c, h, false)
}

// RemovePod releases a pod before it goes, as a terminating pod: no node proxy or waypoint sends
// it connections any more, its capture rules go, then its node proxy's listener in it.
func (a *Ambient) RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("%s: the %s provider does not run its own nodes", a.Name(), c.Provider())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nodes == nil {
		return fmt.Errorf("%s: not installed", a.Name())
	}
	a.leaving[pod.Name] = true
	return a.sync(ctx, c, h, false)
}

// Restart restarts a node's proxy the way a ztunnel pod restart does: the proxy is stopped with
// sig (SIGTERM is HAProxy's hard stop, which closes every connection it carries at once;
// SIGUSR1 its soft-stop; SIGKILL a crash), then started again. The pods' capture rules stay, as
// ztunnel's do, so while the proxy is away the pods' new connections are refused: an ambient
// node proxy restart breaks what it carries. It returns when the new proxy listens.
func (a *Ambient) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ev := RestartEvent{Node: node, Signal: unix.SignalName(sig)}
	np := a.nodes[node]
	if np == nil {
		return ev, fmt.Errorf("%s: no node proxy on node %q (is the variant installed?)", a.Name(), node)
	}
	old := 0
	if p := np.proxy.Process(); p != nil {
		old = p.Process.Pid
	}
	h, _ := c.(clusters.NodeHost)
	ev.StoppedAt = time.Now()
	stopErr := np.proxy.Stop(sig, ambientStopGrace)
	// The new proxy starts from the lab as it is now (as ztunnel does from istiod): sync renders
	// the config again and starts the stopped proxy.
	err := a.sync(ctx, c, h, false)
	if err == nil && !np.proxy.Running() {
		err = fmt.Errorf("node proxy of node %s did not start", node)
	}
	ev.ReadyAt = time.Now()
	ev.ReadyMS = float64(ev.ReadyAt.Sub(ev.StoppedAt).Microseconds()) / 1000
	pid := 0
	if p := np.proxy.Process(); p != nil {
		pid = p.Process.Pid
	}
	ev.Daemon = fmt.Sprintf("%s haproxy on %s (pid %d -> %d)", a.daemon(), node, old, pid)
	if err != nil {
		return ev, fmt.Errorf("%s: restart on %s: %w", a.Name(), node, err)
	}
	if stopErr != nil {
		slog.Warn("node proxy did not stop in time", "variant", a.Name(), "node", node, "err", stopErr)
	}
	return ev, nil
}

// NodeProxy returns a node's proxy (nil if none).
func (a *Ambient) NodeProxy(node string) *HAProxy {
	a.mu.Lock()
	defer a.mu.Unlock()
	if np := a.nodes[node]; np != nil {
		return np.proxy
	}
	return nil
}

// Waypoint returns the waypoint of service ns/name (nil if none).
func (a *Ambient) Waypoint(ns, name string) *Waypoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.waypoints[ns+"/"+name]
}

// tcpSessions returns the session counter (stot) of a proxy's frontend or backend: a tcp-mode
// proxy counts connections, not requests (its req_tot is empty).
func tcpSessions(h *HAProxy, proxy string) (int, error) {
	stats, err := h.ShowStat()
	if err != nil {
		return 0, err
	}
	for _, s := range stats {
		if s["pxname"] == proxy && (s["svname"] == "FRONTEND" || s["svname"] == "BACKEND") {
			return strconv.Atoi(s["stot"])
		}
	}
	return 0, fmt.Errorf("%s: no proxy %q in show stat", h.Name, proxy)
}

// Uninstall removes the capture rules from the pods, stops the node proxies and the waypoints
// and removes the files the install wrote (configs, certificates, and the lab CA if it created
// it and nothing else uses it).
func (a *Ambient) Uninstall(ctx context.Context, c clusters.Cluster) error {
	a.mu.Lock()
	f := a.follower
	a.follower = nil
	a.mu.Unlock()
	f.stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.teardown(ctx, c)
}

// teardown removes what the install made. It also goes over every pod of the enrolled
// namespaces, so rules, waypoint pods and files left by an interrupted install go too.
func (a *Ambient) teardown(ctx context.Context, c clusters.Cluster) error {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return nil
	}
	if a.rt == "" {
		a.rt = h.RuntimeDir()
	}
	var errs []error
	enrolled := a.enrolledNamespaces(c)
	var leftWaypoints []clusters.Pod
	for _, p := range c.Pods() {
		if !enrolled[p.Namespace] {
			continue
		}
		if p.Labels[WaypointForLabel] != "" {
			leftWaypoints = append(leftWaypoints, p)
			continue
		}
		// Rules first: traffic goes straight to its destination again, not to a stopped proxy.
		if err := a.uncapture(ctx, c, p.Name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, node := range a.sortedNodes() {
		if np := a.nodes[node]; np.proxy.Process() != nil {
			if err := np.proxy.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, key := range sortedNames(a.waypoints) {
		if err := a.waypoints[key].Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range leftWaypoints {
		if _, ours := a.waypoints[p.Namespace+"/"+p.Labels[WaypointForLabel]]; ours {
			continue
		}
		if err := c.DeletePod(ctx, p.Name); err != nil {
			errs = append(errs, err)
		}
		for _, d := range []string{filepath.Join(a.rt, "waypoint", p.Name), filepath.Join(a.rt, "pki", p.Name)} {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	os.Remove(filepath.Join(a.rt, "waypoint")) // only if empty
	for _, node := range c.Spec().NodeNames() {
		if err := os.RemoveAll(a.certDir(node)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(a.dir()); err != nil {
		errs = append(errs, err)
	}
	if a.createdCA {
		if err := dropLabCA(a.rt); err != nil {
			errs = append(errs, err)
		}
	}
	a.nodes, a.mesh, a.captured, a.leaving, a.waypoints, a.ca, a.createdCA = nil, nil, nil, nil, nil, nil, false
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: uninstall: %w", a.Name(), err)
	}
	return nil
}
