package variants

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// InjectionLabel on a namespace injects a sidecar proxy into its pods, as in Istio.
const InjectionLabel = "istio-injection"

// MTLSLabel "disabled" on an injected namespace makes its sidecars talk plaintext: the lab's
// stand-in for an Istio PeerAuthentication with mode DISABLE. It tells the sidecar-plaintext
// variant's namespace from the sidecar variant's.
const MTLSLabel = "onehop.dev/mtls"

// The sidecar's uid and ports are Istio's: the interception rules exempt the proxy's own
// traffic by uid, and never redirect the proxy's ports.
const (
	ProxyUID     = 1337
	OutboundPort = 15001 // where the pod's outgoing TCP connections are redirected
	InboundPort  = 15006 // where connections coming into the pod are redirected
	AdminPort    = 15000 // HAProxy's stats page, on 127.0.0.1 only
)

// drainTime bounds a graceful sidecar stop, as Istio's terminationDrainDuration (5s).
const drainTime = 5 * time.Second

// Sidecar is Istio's sidecar architecture with HAProxy as the proxy: every pod of an injected
// namespace gets a HAProxy in its network namespace (its own container cgroup, uid 1337) and
// istio-init-style iptables rules that redirect the pod's outgoing TCP connections to the
// proxy's outbound listener (which routes HTTP requests by their original destination to the
// service's endpoints, balanced round-robin over pooled connections) and the connections coming
// into the pod to its inbound listener (which hands them to the application on 127.0.0.1).
// Between sidecars the traffic is mutual TLS with certificates from the lab CA unless MTLS is off.
type Sidecar struct {
	MTLS bool
	// Sockmap: the namespace is sidecar-sockmap's (SockmapLabel "sidecar"), not this variant's
	// unless set (see SidecarSockmap).
	Sockmap bool

	// editConfig, when set, edits a pod's rendered HAProxy config before it is checked (tests).
	editConfig func(pod string, cfg []byte) []byte

	mu        sync.Mutex
	rt        string              // the lab's runtime dir
	sidecars  map[string]*sidecar // by pod name; nil: not installed
	leaving   map[string]bool     // pods handed to RemovePod that are still in the store
	ca        *pki.CA
	createdCA bool      // this install created the lab CA, so uninstall may remove it
	follower  *follower // re-syncs after store changes
}

// sidecar is one pod's proxy.
type sidecar struct {
	pod   clusters.Pod
	dir   string // config, admin socket, interception rules
	certs pki.Workload
	proxy *HAProxy
}

func init() {
	RegisterNetns(func(clusters.Cluster) NetnsVariant { return &Sidecar{MTLS: true} })
	RegisterNetns(func(clusters.Cluster) NetnsVariant { return &Sidecar{MTLS: false} })
}

func (s *Sidecar) Name() string {
	if s.Sockmap {
		return "sidecar-sockmap"
	}
	if s.MTLS {
		return "sidecar"
	}
	return "sidecar-plaintext"
}

func (s *Sidecar) Describe() string {
	v, err := HAProxyVersion()
	if err != nil {
		v = "(not installed: run `make deps`)"
	}
	enc := "plaintext between sidecars"
	if s.MTLS {
		// HAProxy 2.6 verifies the peer's chain but cannot match its SPIFFE URI SAN.
		enc = "mutual TLS between sidecars (lab CA; chain verified, SPIFFE ID not checked)"
	}
	return fmt.Sprintf("Istio sidecar architecture: HAProxy %s in every pod (uid %d, own cgroup), iptables REDIRECT interception, L7 HTTP on both sides, %s", v, ProxyUID, enc)
}

func (s *Sidecar) Labels() map[string]string {
	if s.Sockmap {
		return map[string]string{InjectionLabel: "enabled", SockmapLabel: "sidecar"}
	}
	if s.MTLS {
		return map[string]string{InjectionLabel: "enabled"}
	}
	return map[string]string{InjectionLabel: "enabled", MTLSLabel: "disabled"}
}

// injects says whether this variant injects the pods of a namespace.
func (s *Sidecar) injects(ns clusters.Namespace) bool {
	return ns.Labels[InjectionLabel] == "enabled" && (ns.Labels[MTLSLabel] == "disabled") == !s.MTLS &&
		(ns.Labels[SockmapLabel] == "sidecar") == s.Sockmap
}

// injectedPods lists the pods of the namespaces this variant injects, sorted by name. With
// ready, only pods that are complete and not leaving: in the service store (a pod enters it
// last when created, leaves it first when deleted) and not handed to RemovePod.
func (s *Sidecar) injectedPods(c clusters.Cluster, ready bool) []clusters.Pod {
	injected := map[string]bool{}
	for _, ns := range c.Spec().Namespaces {
		injected[ns.Name] = s.injects(ns)
	}
	var out []clusters.Pod
	for _, p := range c.Pods() {
		if injected[p.Namespace] && (!ready || c.Services().HasPod(p.Name) && !s.leaving[p.Name]) {
			out = append(out, p)
		}
	}
	return out
}

// Install injects a sidecar into every pod of the injected namespaces and follows the service
// store from then on (new services and endpoints, new pods).
func (s *Sidecar) Install(ctx context.Context, c clusters.Cluster) (err error) {
	h, ok := c.(clusters.NodeHost)
	if !ok {
		return fmt.Errorf("%s: the %s provider does not run the lab's pods; install Istio and label the namespace %s=enabled instead", s.Name(), c.Provider(), InjectionLabel)
	}
	if _, err := HAProxyVersion(); err != nil {
		return fmt.Errorf("%s: %w", s.Name(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sidecars != nil {
		return fmt.Errorf("%s: already installed; uninstall it first", s.Name())
	}
	s.rt, s.sidecars, s.leaving = h.RuntimeDir(), map[string]*sidecar{}, map[string]bool{}
	defer func() {
		if err != nil {
			s.teardown(context.WithoutCancel(ctx), c)
		}
	}()
	if s.MTLS {
		if err := s.loadCA(); err != nil {
			return err
		}
	}
	changes := c.Services().Watch() // before the first sync, so no change falls in between
	if err := s.sync(ctx, c, true); err != nil {
		return fmt.Errorf("%s: %w", s.Name(), err)
	}
	s.follower = follow(changes, s.Name()+" sidecars", func(ctx context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.sync(ctx, c, false)
	})
	return nil
}

// loadCA loads the lab CA, creating it if no variant did yet.
func (s *Sidecar) loadCA() error {
	dir := filepath.Join(s.rt, "pki")
	// The proxies (uid 1337) must traverse it to reach their own 0700 directories.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	_, err := os.Stat(filepath.Join(dir, "ca", "ca.pem"))
	s.createdCA = errors.Is(err, os.ErrNotExist)
	if s.ca, err = pki.LoadOrCreate(filepath.Join(dir, "ca")); err != nil {
		return fmt.Errorf("%s: lab CA: %w", s.Name(), err)
	}
	return nil
}

// sync makes the sidecars match the lab: pods that are gone lose theirs, new pods (and pods
// whose proxy is gone, say because the pod was recreated) get one, and every proxy whose config
// changed is reloaded. New sidecars are serving before any other proxy sends traffic to them.
func (s *Sidecar) sync(ctx context.Context, c clusters.Cluster, installing bool) error {
	var errs []error
	for name := range s.leaving {
		if !c.Services().HasPod(name) {
			delete(s.leaving, name)
		}
	}
	current := map[string]bool{}
	var added []*sidecar
	for _, p := range s.injectedPods(c, true) {
		current[p.Name] = true
		if old, ok := s.sidecars[p.Name]; ok {
			if old.proxy.Running() && old.pod.Netns == p.Netns && slices.Equal(old.pod.IPs, p.IPs) {
				continue
			}
			old.proxy.Stop(syscall.SIGKILL, drainTime) // the pod was recreated: its old proxy is gone or must go
		}
		sc, err := s.prepare(c, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.sidecars[p.Name] = sc
		added = append(added, sc)
	}
	for name, sc := range s.sidecars {
		if !current[name] {
			sc.proxy.Stop(syscall.SIGTERM, drainTime)
			s.removeFiles(sc)
			delete(s.sidecars, name)
		}
	}
	snap := c.Services().Snapshot()
	isNew := map[*sidecar]bool{}
	var checked []*sidecar
	for _, sc := range added { // every config is checked before any new proxy starts
		isNew[sc] = true
		if _, err := sc.proxy.WriteConfig(ctx, s.config(sc, snap)); err != nil {
			errs = append(errs, err)
			delete(s.sidecars, sc.pod.Name)
			continue
		}
		checked = append(checked, sc)
	}
	if len(errs) > 0 && installing { // a failing Install starts nothing
		return errors.Join(errs...)
	}
	for _, sc := range checked {
		if err := sc.proxy.Run(ctx); err != nil {
			errs = append(errs, err)
			delete(s.sidecars, sc.pod.Name)
			continue
		}
		if err := s.intercept(ctx, c, sc); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sc := range s.sorted() {
		if isNew[sc] {
			continue
		}
		changed, err := sc.proxy.WriteConfig(ctx, s.config(sc, snap))
		if err == nil && changed {
			err = sc.proxy.Reload(ctx)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Sidecar) sorted() []*sidecar {
	var out []*sidecar
	for _, sc := range s.sidecars {
		out = append(out, sc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pod.Name < out[j].pod.Name })
	return out
}

func (s *Sidecar) configDir(pod string) string { return filepath.Join(s.rt, "sidecar", pod) }
func (s *Sidecar) certDir(pod string) string   { return filepath.Join(s.rt, "pki", pod) }

// prepare makes a pod's config directory and certificate; the proxy is not started yet.
func (s *Sidecar) prepare(c clusters.Cluster, p clusters.Pod) (*sidecar, error) {
	sc := &sidecar{pod: p, dir: s.configDir(p.Name)}
	fail := func(err error) (*sidecar, error) { return nil, fmt.Errorf("sidecar of pod %s: %w", p.Name, err) }
	if err := os.MkdirAll(sc.dir, 0o755); err != nil {
		return fail(err)
	}
	if err := os.Chown(sc.dir, ProxyUID, ProxyUID); err != nil { // HAProxy creates its admin socket there
		return fail(err)
	}
	if s.MTLS {
		var err error
		// Istio's identity is the pod's service account; a lab pod's is named after the pod.
		if sc.certs, err = s.ca.Issue(s.certDir(p.Name), pki.Identity(p.Namespace, p.Name), []string{p.Name}, ProxyUID); err != nil {
			return fail(fmt.Errorf("issue its certificate: %w", err))
		}
	}
	sc.proxy = &HAProxy{
		Name:   "sidecar of pod " + p.Name,
		Config: filepath.Join(sc.dir, "haproxy.cfg"),
		Admin:  filepath.Join(sc.dir, "admin.sock"),
		Ports:  []int{OutboundPort, InboundPort, AdminPort},
		Start: func(ctx context.Context, argv []string) (*clusters.Process, error) {
			return c.Start(ctx, p.Name, clusters.Command{Name: "sidecar", Argv: argv, Detach: true, UID: ProxyUID, Container: "sidecar"})
		},
	}
	return sc, nil
}

// sidecarConfig is what a pod's HAProxy config is rendered from.
type sidecarConfig struct {
	Pod, Namespace string
	Admin          string
	MTLS           bool
	Cert, CA       string // the pod's certificate chain and key, and the lab CA
	Services       []outboundService
}

// outboundService is one backend: a service port at one VIP.
type outboundService struct {
	Backend string // "out:<VIP>:<port>", what the outbound frontend looks up
	Service string // namespace/name:port
	Servers []outboundServer
}

type outboundServer struct {
	Name, Addr string
	TLS        bool // the endpoint has a sidecar of this variant: mutual TLS to its inbound listener
}

// sidecarTemplate is a pod's HAProxy config. Settings follow Istio's defaults where HAProxy
// has an equivalent (2 worker threads, 10s connect timeout, 1h idle timeout, 2 retries).
var sidecarTemplate = template.Must(template.New("haproxy.cfg").Parse(`# Sidecar of pod {{.Pod}} (namespace {{.Namespace}}), rendered by onehop from the lab's service store.
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
    # connections to an endpoint are pooled and shared by all the pod's requests, as Envoy does
    http-reuse always

# Every TCP connection the application opens arrives here (iptables REDIRECT in the pod). The
# dst and dst_port fetches return its original destination (SO_ORIGINAL_DST), which picks the
# service port's backend.
frontend outbound
    bind :{{.OutboundPort}}
    # reached directly rather than redirected, a proxy port would be proxied to itself
    tcp-request connection reject if { dst_port {{.ProxyPorts}} }
    use_backend out:%[dst]:%[dst_port]
    default_backend passthrough

# Not a service: on to the original destination, as Istio's PassthroughCluster.
backend passthrough
    http-reuse never
    server original 0.0.0.0
{{if .MTLS}}
# To a meshed endpoint: mutual TLS. "verify required" checks that its certificate chains to the
# lab CA; HAProxy 2.6 cannot match the SPIFFE ID in its URI SAN (verifyhost checks DNS names only).
{{end}}{{range .Services}}
# {{.Service}}
backend {{.Backend}}
    balance roundrobin
{{- range .Servers}}
    server {{.Name}} {{.Addr}}{{if .TLS}} ssl crt {{$.Cert}} ca-file {{$.CA}} verify required{{end}}
{{- end}}
{{end}}
# Every TCP connection coming into the pod arrives here (iptables REDIRECT in the pod).{{if .MTLS}}
# "verify required" checks that the peer's certificate chains to the lab CA. HAProxy 2.6 cannot
# match the SPIFFE ID in its URI SAN, so any workload of the mesh is accepted (Istio would
# further apply AuthorizationPolicies to the ID).{{end}}
frontend inbound
    bind :{{.InboundPort}}{{if .MTLS}} ssl crt {{.Cert}} ca-file {{.CA}} verify required{{end}}
    tcp-request connection reject if { dst_port {{.ProxyPorts}} }
    default_backend app

# The application, on 127.0.0.1 and the port the peer connected to (no port: the original one).
backend app
    server app 127.0.0.1

listen stats
    bind 127.0.0.1:{{.AdminPort}}
    stats enable
    stats uri /stats
`))

// config renders a pod's HAProxy config from a snapshot of the service store. Every service of
// the lab is there (Istio's default without a Sidecar resource), IPv4 only: HAProxy reads the
// original destination of IPv4 connections only, so only IPv4 is intercepted.
func (s *Sidecar) config(sc *sidecar, snap services.Snapshot) []byte {
	cfg := sidecarConfig{Pod: sc.pod.Name, Namespace: sc.pod.Namespace, Admin: sc.proxy.Admin, MTLS: s.MTLS,
		Cert: sc.certs.Combined, CA: sc.certs.CA}
	for _, svc := range snap.Services {
		for _, vip := range svc.ClusterIPs {
			if !vip.Is4() {
				continue
			}
			for _, port := range svc.Ports {
				if port.Protocol == "UDP" {
					continue
				}
				o := outboundService{Backend: fmt.Sprintf("out:%s:%d", vip, port.Port), Service: fmt.Sprintf("%s:%d", svc.Key(), port.Port)}
				for _, ep := range svc.Endpoints {
					for _, ip := range ep.IPs {
						if ep.Ready && ip.Is4() {
							_, meshed := s.sidecars[ep.Pod]
							o.Servers = append(o.Servers, outboundServer{Name: ep.Pod, Addr: fmt.Sprintf("%s:%d", ip, port.TargetPort), TLS: s.MTLS && meshed})
						}
					}
				}
				cfg.Services = append(cfg.Services, o)
			}
		}
	}
	var b bytes.Buffer
	err := sidecarTemplate.Execute(&b, struct {
		sidecarConfig
		OutboundPort, InboundPort, AdminPort int
		ProxyPorts                           string
	}{cfg, OutboundPort, InboundPort, AdminPort, fmt.Sprintf("%d %d %d", AdminPort, OutboundPort, InboundPort)})
	if err != nil {
		panic(err) // the template is fixed: an error is a bug
	}
	if s.editConfig != nil {
		return s.editConfig(sc.pod.Name, b.Bytes())
	}
	return b.Bytes()
}

// Interception chains in the pod's nat table, as istio-init's ISTIO_* chains.
const (
	chainSidecarInbound    = "ONEHOP-SIDECAR-INBOUND"
	chainSidecarInRedirect = "ONEHOP-SIDECAR-IN-REDIRECT"
	chainSidecarOutput     = "ONEHOP-SIDECAR-OUTPUT"
	chainSidecarRedirect   = "ONEHOP-SIDECAR-REDIRECT"
)

var sidecarChains = []string{chainSidecarInbound, chainSidecarInRedirect, chainSidecarOutput, chainSidecarRedirect}

// sidecarJumps hook the chains into the built-in ones (as iptables-save prints them).
var sidecarJumps = []string{
	"-A PREROUTING -p tcp -j " + chainSidecarInbound,
	"-A OUTPUT -p tcp -j " + chainSidecarOutput,
}

// interceptionRules is iptables-restore input redirecting the pod's TCP traffic to its proxy.
func interceptionRules() []byte {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, ch := range sidecarChains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	uid := strconv.Itoa(ProxyUID)
	lines := []string{
		fmt.Sprintf("-A %s -p tcp -j REDIRECT --to-ports %d", chainSidecarRedirect, OutboundPort),
		fmt.Sprintf("-A %s -p tcp -j REDIRECT --to-ports %d", chainSidecarInRedirect, InboundPort),
		// Inbound: everything but the proxy's own ports.
		fmt.Sprintf("-A %s -p tcp -m multiport --dports %d,%d,%d -j RETURN", chainSidecarInbound, AdminPort, OutboundPort, InboundPort),
		fmt.Sprintf("-A %s -p tcp -j %s", chainSidecarInbound, chainSidecarInRedirect),
		// Outbound. The proxy reaching its own pod (the application calling itself through a
		// service) enters through the inbound side, as a peer's connection would...
		fmt.Sprintf("-A %s ! -d 127.0.0.0/8 -o lo -m owner --uid-owner %s -j %s", chainSidecarOutput, uid, chainSidecarInRedirect),
		// ...the application calling its own pod IP stays local...
		fmt.Sprintf("-A %s -o lo -m owner ! --uid-owner %s -j RETURN", chainSidecarOutput, uid),
		// ...the proxy's own connections go out as they are, and so does loopback traffic...
		fmt.Sprintf("-A %s -m owner --uid-owner %s -j RETURN", chainSidecarOutput, uid),
		fmt.Sprintf("-A %s -d 127.0.0.0/8 -j RETURN", chainSidecarOutput),
		// ...and every other TCP connection goes to the proxy's outbound listener.
		fmt.Sprintf("-A %s -j %s", chainSidecarOutput, chainSidecarRedirect),
	}
	lines = append(lines, sidecarJumps...)
	b.WriteString(strings.Join(lines, "\n") + "\nCOMMIT\n")
	return []byte(b.String())
}

// intercept installs the interception rules in the pod's network namespace (replacing any left
// by an earlier install).
func (s *Sidecar) intercept(ctx context.Context, c clusters.Cluster, sc *sidecar) error {
	if err := removeInterception(ctx, c, sc.pod.Name); err != nil {
		return err
	}
	if err := podRestore(ctx, c, sc.pod.Name, string(interceptionRules())); err != nil {
		return fmt.Errorf("sidecar of pod %s: install the interception rules: %w", sc.pod.Name, err)
	}
	return nil
}

// removeInterception deletes exactly the jumps and chains intercept added to a pod, if any.
func removeInterception(ctx context.Context, c clusters.Cluster, pod string) error {
	if err := podUnhook(ctx, c, pod, sidecarChains, sidecarJumps); err != nil {
		return fmt.Errorf("sidecar of pod %s: remove the interception rules: %w", pod, err)
	}
	return nil
}

// Uninstall stops every sidecar, removes the interception rules from the pods and the files the
// install wrote (configs, certificates, and the lab CA if it created it and nobody else uses it).
func (s *Sidecar) Uninstall(ctx context.Context, c clusters.Cluster) error {
	s.mu.Lock()
	f := s.follower
	s.follower = nil
	s.mu.Unlock()
	f.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.teardown(ctx, c)
}

// teardown removes what the install made. It also goes over the pods of the injected namespaces,
// so rules and files left by an install that was interrupted go too.
func (s *Sidecar) teardown(ctx context.Context, c clusters.Cluster) error {
	var errs []error
	if s.rt == "" {
		if h, ok := c.(clusters.NodeHost); ok {
			s.rt = h.RuntimeDir()
		} else {
			return nil
		}
	}
	pods := map[string]bool{}
	for _, p := range s.injectedPods(c, false) {
		pods[p.Name] = true
	}
	for name := range s.sidecars {
		pods[name] = true
	}
	var names []string
	for name := range pods {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		// Rules first: traffic goes straight to its destination again, not to a stopped proxy.
		if _, ok := c.Pod(name); ok {
			if err := removeInterception(ctx, c, name); err != nil {
				errs = append(errs, err)
			}
		}
		if sc, ok := s.sidecars[name]; ok && sc.proxy.Process() != nil {
			if err := sc.proxy.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(s.configDir(name)); err != nil {
			errs = append(errs, err)
		}
		if s.MTLS {
			if err := os.RemoveAll(s.certDir(name)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	os.Remove(filepath.Join(s.rt, "sidecar")) // only if empty: another sidecar variant may use it
	if s.createdCA {
		pkiDir := filepath.Join(s.rt, "pki")
		if entries, _ := os.ReadDir(pkiDir); len(entries) == 1 && entries[0].Name() == "ca" {
			if err := os.RemoveAll(pkiDir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	s.sidecars, s.leaving, s.ca, s.createdCA = nil, nil, nil, false
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: uninstall: %w", s.Name(), err)
	}
	return nil
}

// AddPod injects a sidecar into a new pod of an injected namespace (the store watcher does it
// too; this returns once the pod's proxy listens, its rules are in and the other proxies know it).
func (s *Sidecar) AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sidecars == nil {
		return fmt.Errorf("%s: not installed", s.Name())
	}
	if sc, ok := s.sidecars[pod.Name]; ok && sc.proxy.Running() {
		return nil
	}
	err := s.sync(ctx, c, false)
	if sc, ok := s.sidecars[pod.Name]; ok && sc.proxy.Running() {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("pod %s is not in a namespace labelled %s", pod.Name, labelString(s.Labels()))
	}
	return fmt.Errorf("%s: inject pod %s: %w", s.Name(), pod.Name, err)
}

// RemovePod takes a pod's sidecar out before the pod goes: rules, proxy, files.
func (s *Sidecar) RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc, ok := s.sidecars[pod.Name]
	if !ok {
		return nil
	}
	s.leaving[pod.Name] = true // until it leaves the store: the watcher must not inject it again
	delete(s.sidecars, pod.Name)
	err := removeInterception(ctx, c, pod.Name)
	if serr := sc.proxy.Stop(syscall.SIGTERM, drainTime); serr != nil {
		err = errors.Join(err, serr)
	}
	s.removeFiles(sc)
	return err
}

func labelString(labels map[string]string) string {
	var kv []string
	for k, v := range labels {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// removeFiles removes a sidecar's config directory and certificate.
func (s *Sidecar) removeFiles(sc *sidecar) {
	os.RemoveAll(sc.dir)
	if s.MTLS {
		os.RemoveAll(s.certDir(sc.pod.Name))
	}
}

// Restart restarts the sidecars of the node's pods as a container restart would: the proxy is
// stopped with sig (SIGKILL: a crash; SIGTERM: the graceful stop, which for HAProxy is SIGUSR1,
// its soft-stop, bounded by Istio's 5s drain; HAProxy's own SIGTERM is a hard stop), then
// started again; the pod's interception rules stay, as they do in Kubernetes. It returns when
// every proxy of the node listens again.
func (s *Sidecar) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := RestartEvent{Node: node, Signal: unix.SignalName(sig)}
	var scs []*sidecar
	for _, sc := range s.sorted() {
		if sc.pod.Node == node {
			scs = append(scs, sc)
		}
	}
	if len(scs) == 0 {
		return ev, fmt.Errorf("%s: no sidecar runs on node %q (is the variant installed?)", s.Name(), node)
	}
	deliver, how := sig, ""
	if sig == syscall.SIGTERM {
		deliver, how = syscall.SIGUSR1, "; SIGTERM sent as HAProxy's graceful SIGUSR1"
	}
	ev.StoppedAt = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(scs))
	pids := make([]string, len(scs))
	for i, sc := range scs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			old := 0
			if p := sc.proxy.Process(); p != nil {
				old = p.Process.Pid
			}
			sc.proxy.Stop(deliver, drainTime) // a drain cut short is what kubelet does too
			if err := sc.proxy.Run(ctx); err != nil {
				errs[i] = err
				return
			}
			pids[i] = fmt.Sprintf("%s pid %d -> %d", sc.pod.Name, old, sc.proxy.Process().Process.Pid)
		}()
	}
	wg.Wait()
	ev.ReadyAt = time.Now()
	ev.ReadyMS = float64(ev.ReadyAt.Sub(ev.StoppedAt).Microseconds()) / 1000
	ev.Daemon = fmt.Sprintf("haproxy sidecars (%s%s)", strings.Join(pids, ", "), how)
	if err := errors.Join(errs...); err != nil {
		return ev, fmt.Errorf("%s: restart on %s: %w", s.Name(), node, err)
	}
	return ev, nil
}
