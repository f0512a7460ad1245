// Package telemetry turns the kernel's connection events (datapath.Event: open, periodic report,
// close, failed connect) into Prometheus metrics named and labelled as Istio names them
// (istio_tcp_*), onehop_tcp_* metrics for what Istio has no name for (retransmits, loss, RTT,
// failed connects, long-lived connections one by one), and an access log of JSON lines.
package telemetry

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// Workload is who is at one end of a connection, in the terms of Istio's metric labels. An
// empty field is reported as "unknown", as Istio does.
type Workload struct {
	Name              string `json:"name,omitempty"` // the workload (Deployment, ...), not the pod
	Namespace         string `json:"namespace,omitempty"`
	App               string `json:"app,omitempty"`
	Version           string `json:"version,omitempty"`
	CanonicalService  string `json:"canonical_service,omitempty"`
	CanonicalRevision string `json:"canonical_revision,omitempty"`
	Cluster           string `json:"cluster,omitempty"`
}

// Service is the service a connection was made to.
type Service struct {
	Host      string // e.g. fortio.ns.svc.cluster.local
	Name      string
	Namespace string
}

// Directory says who is at an address; each method reports false when it does not know.
type Directory interface {
	// Workload is the workload with address ip.
	Workload(ip netip.Addr) (Workload, bool)
	// Service is the service whose frontend is vip.
	Service(vip netip.AddrPort) (Service, bool)
	// ServiceOf is a service that endpoint serves (the server side of a connection knows its
	// own address, not the VIP the client dialled).
	ServiceOf(endpoint netip.AddrPort) (Service, bool)
}

// Directories asks each directory in turn; the first that knows answers.
type Directories []Directory

func (ds Directories) Workload(ip netip.Addr) (Workload, bool) {
	for _, d := range ds {
		if w, ok := d.Workload(ip); ok {
			return w, true
		}
	}
	return Workload{}, false
}

func (ds Directories) Service(vip netip.AddrPort) (Service, bool) {
	for _, d := range ds {
		if s, ok := d.Service(vip); ok {
			return s, true
		}
	}
	return Service{}, false
}

func (ds Directories) ServiceOf(ep netip.AddrPort) (Service, bool) {
	for _, d := range ds {
		if s, ok := d.ServiceOf(ep); ok {
			return s, true
		}
	}
	return Service{}, false
}

// ServiceFromName reads a service from the name the agent's config gives it: an Istio cluster
// name (outbound|80||name.ns.svc.cluster.local), a host name, or namespace/host.
func ServiceFromName(name string) Service {
	if parts := strings.Split(name, "|"); len(parts) == 4 {
		name = parts[3]
	}
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	s := Service{Host: name, Name: name}
	if labels := strings.Split(name, "."); len(labels) >= 3 && labels[2] == "svc" {
		s.Name, s.Namespace = labels[0], labels[1]
	}
	return s
}

// Programmed is a Directory of the services in the config last programmed: the service of a
// VIP, and (for the server side) of an endpoint. Set it after each apply; the endpoint index is
// built again, once, when a server-side lookup first needs it.
type Programmed struct {
	cfg atomic.Pointer[model.Config]

	mu        sync.Mutex
	indexedOf *model.Config
	byEP      map[netip.AddrPort]string
}

// Set records the config now programmed.
func (p *Programmed) Set(c *model.Config) { p.cfg.Store(c) }

func (p *Programmed) Workload(netip.Addr) (Workload, bool) { return Workload{}, false }

func (p *Programmed) Service(vip netip.AddrPort) (Service, bool) {
	c := p.cfg.Load()
	if c == nil {
		return Service{}, false
	}
	s, ok := c.Services[model.Key{VIP: vip.Addr(), Port: vip.Port(), Proto: model.TCP}]
	if !ok {
		return Service{}, false
	}
	return ServiceFromName(s.Name), true
}

func (p *Programmed) ServiceOf(ep netip.AddrPort) (Service, bool) {
	c := p.cfg.Load()
	if c == nil {
		return Service{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.indexedOf != c {
		p.byEP = map[netip.AddrPort]string{}
		for _, s := range c.Services {
			for _, eps := range s.Priorities {
				for _, e := range eps {
					// An endpoint of several services: the smallest name, so the answer is stable.
					if n, ok := p.byEP[e.Addr]; !ok || s.Name < n {
						p.byEP[e.Addr] = s.Name
					}
				}
			}
		}
		p.indexedOf = c
	}
	name, ok := p.byEP[ep]
	if !ok {
		return Service{}, false
	}
	return ServiceFromName(name), true
}

// Pods are the pods enrolled with this agent, as their enrollment described them, by network
// namespace cookie; their addresses are learnt from their connections, so that a peer on the
// same node is known by its IP too.
type Pods struct {
	mu      sync.RWMutex
	byNetns map[uint64]Workload
	byIP    map[netip.Addr]uint64
}

// Set records the pod in netns with its addresses (more are learnt from its connections), or
// with ok false forgets it.
func (p *Pods) Set(netns uint64, w Workload, ips []netip.Addr, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byNetns == nil {
		p.byNetns, p.byIP = map[uint64]Workload{}, map[netip.Addr]uint64{}
	}
	for ip, n := range p.byIP {
		if n == netns {
			delete(p.byIP, ip)
		}
	}
	delete(p.byNetns, netns)
	if !ok {
		return
	}
	p.byNetns[netns] = w
	for _, ip := range ips {
		p.byIP[ip.Unmap()] = netns
	}
}

// Local returns the pod of a netns.
func (p *Pods) Local(netns uint64) (Workload, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	w, ok := p.byNetns[netns]
	return w, ok
}

// learn records that netns has address ip.
func (p *Pods) learn(netns uint64, ip netip.Addr) {
	if !ip.IsValid() || ip.IsLoopback() {
		return
	}
	p.mu.RLock()
	n, known := p.byIP[ip]
	_, enrolled := p.byNetns[netns]
	p.mu.RUnlock()
	if (known && n == netns) || !enrolled {
		return
	}
	p.mu.Lock()
	if _, still := p.byNetns[netns]; still { // not forgotten meanwhile
		p.byIP[ip] = netns
	}
	p.mu.Unlock()
}

func (p *Pods) Workload(ip netip.Addr) (Workload, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if n, ok := p.byIP[ip]; ok {
		w, ok := p.byNetns[n]
		return w, ok
	}
	return Workload{}, false
}

func (p *Pods) Service(netip.AddrPort) (Service, bool)   { return Service{}, false }
func (p *Pods) ServiceOf(netip.AddrPort) (Service, bool) { return Service{}, false }
