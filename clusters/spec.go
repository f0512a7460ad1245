package clusters

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Spec declares a lab cluster. Zero values take the defaults of Default.
type Spec struct {
	// Name identifies the lab; every object it creates is prefixed "onehop-<name>".
	Name       string       `yaml:"name" json:"name"`
	Nodes      int          `yaml:"nodes" json:"nodes"`
	IPFamilies []string     `yaml:"ipFamilies" json:"ipFamilies"` // ipv4, ipv6; the first is primary
	Network    Network      `yaml:"network" json:"network"`
	Namespaces []Namespace  `yaml:"namespaces,omitempty" json:"namespaces,omitempty"`
	Pods       []PodSpec    `yaml:"pods,omitempty" json:"pods,omitempty"`
	Services   []ServiceDef `yaml:"services,omitempty" json:"services,omitempty"`
}

// Network holds the address plan. Each node gets one pod subnet (/24 for IPv4, /64 for IPv6)
// carved from the pod CIDR, in node order.
type Network struct {
	UnderlayIPv4 string `yaml:"underlayIPv4" json:"underlayIPv4"`
	PodIPv4      string `yaml:"podIPv4" json:"podIPv4"`
	ServiceIPv4  string `yaml:"serviceIPv4" json:"serviceIPv4"`
	UnderlayIPv6 string `yaml:"underlayIPv6" json:"underlayIPv6"`
	PodIPv6      string `yaml:"podIPv6" json:"podIPv6"`
	ServiceIPv6  string `yaml:"serviceIPv6" json:"serviceIPv6"`
	MTU          int    `yaml:"mtu" json:"mtu"`
}

// Namespace is a Kubernetes-style namespace; its labels drive mesh enrollment in later variants.
type Namespace struct {
	Name   string            `yaml:"name" json:"name"`
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// PodSpec declares a pod: a network namespace with a veth on its node's bridge and a cgroup leaf.
type PodSpec struct {
	Name      string            `yaml:"name" json:"name"`
	Namespace string            `yaml:"namespace" json:"namespace"`
	Node      string            `yaml:"node" json:"node"`
	Labels    map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// Component groups pods for CPU accounting (client, server, ...); defaults to the app label.
	Component string `yaml:"component,omitempty" json:"component,omitempty"`
	// Workload, when set, is started in the pod when it is created (see Workloads).
	Workload *Workload `yaml:"workload,omitempty" json:"workload,omitempty"`
}

// Workload is a long-running process of a pod.
type Workload struct {
	Kind string `yaml:"kind" json:"kind"` // fortio-server
	Port int    `yaml:"port" json:"port"`
}

// Workloads are the workload kinds a pod can run.
var Workloads = map[string]bool{"fortio-server": true}

// ServiceDef declares a ClusterIP service selecting pods by label.
type ServiceDef struct {
	Name      string            `yaml:"name" json:"name"`
	Namespace string            `yaml:"namespace" json:"namespace"`
	Selector  map[string]string `yaml:"selector" json:"selector"`
	Ports     []ServicePort     `yaml:"ports" json:"ports"`
}

// ServicePort maps a service port to the pods' target port.
type ServicePort struct {
	Name       string `yaml:"name" json:"name"`
	Port       int    `yaml:"port" json:"port"`
	TargetPort int    `yaml:"targetPort" json:"targetPort"`
	Protocol   string `yaml:"protocol" json:"protocol"` // TCP (default) or UDP
}

// Default returns the default lab: two IPv4 nodes, no pods.
func Default() Spec {
	s := Spec{}
	s.SetDefaults()
	return s
}

// SetDefaults fills every unset field.
func (s *Spec) SetDefaults() {
	if s.Name == "" {
		s.Name = "lab"
	}
	if s.Nodes == 0 {
		s.Nodes = 2
	}
	if len(s.IPFamilies) == 0 {
		s.IPFamilies = []string{"ipv4"}
	}
	n := &s.Network
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&n.UnderlayIPv4, "172.30.0.0/24")
	def(&n.PodIPv4, "10.244.0.0/16")
	def(&n.ServiceIPv4, "10.96.0.0/16")
	def(&n.UnderlayIPv6, "fd00:172:30::/64")
	def(&n.PodIPv6, "fd00:10:244::/56")
	def(&n.ServiceIPv6, "fd00:10:96::/112")
	if n.MTU == 0 {
		n.MTU = 1500
	}
	for i := range s.Pods {
		p := &s.Pods[i]
		def(&p.Namespace, "default")
		if p.Component == "" {
			p.Component = p.Labels["app"]
		}
		def(&p.Component, p.Name)
		if p.Workload != nil && p.Workload.Port == 0 {
			p.Workload.Port = 8080
		}
	}
	for i := range s.Services {
		sv := &s.Services[i]
		def(&sv.Namespace, "default")
		for j := range sv.Ports {
			p := &sv.Ports[j]
			def(&p.Protocol, "TCP")
			if p.TargetPort == 0 {
				p.TargetPort = p.Port
			}
		}
	}
}

// NodeNames returns the node names n1..nN.
func (s Spec) NodeNames() []string {
	out := make([]string, max(s.Nodes, 0))
	for i := range out {
		out[i] = fmt.Sprintf("n%d", i+1)
	}
	return out
}

// HasFamily reports whether the lab runs the given IP family ("ipv4" or "ipv6").
func (s Spec) HasFamily(f string) bool {
	for _, x := range s.IPFamilies {
		if x == f {
			return true
		}
	}
	return false
}

var (
	labName = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)
	// DNS-1123 label, as Kubernetes requires for pod, service and namespace names.
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// Validate checks a defaulted spec and returns every problem, each naming its field.
func (s Spec) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if !labName.MatchString(s.Name) {
		bad("name", "%q must be 1-12 lowercase letters or digits, starting with a letter (it prefixes interface and namespace names)", s.Name)
	}
	if s.Nodes < 1 || s.Nodes > 32 {
		bad("nodes", "%d must be between 1 and 32", s.Nodes)
	}
	seenFam := map[string]bool{}
	for i, f := range s.IPFamilies {
		if f != "ipv4" && f != "ipv6" {
			bad(fmt.Sprintf("ipFamilies[%d]", i), "%q must be ipv4 or ipv6", f)
		}
		if seenFam[f] {
			bad(fmt.Sprintf("ipFamilies[%d]", i), "%q is listed twice", f)
		}
		seenFam[f] = true
	}
	errs = append(errs, s.Network.validate(s)...)
	if s.Network.MTU < 1280 || s.Network.MTU > 9000 {
		bad("network.mtu", "%d must be between 1280 and 9000", s.Network.MTU)
	}

	nsNames := map[string]bool{"default": true}
	for i, ns := range s.Namespaces {
		f := fmt.Sprintf("namespaces[%d].name", i)
		if !dnsLabel.MatchString(ns.Name) {
			bad(f, "%q is not a valid name (lowercase letters, digits and '-')", ns.Name)
		}
		nsNames[ns.Name] = true
	}
	nodes := map[string]bool{}
	for _, n := range s.NodeNames() {
		nodes[n] = true
	}
	pods := map[string]bool{}
	for i, p := range s.Pods {
		f := fmt.Sprintf("pods[%d]", i)
		if !dnsLabel.MatchString(p.Name) || len(p.Name) > 40 {
			bad(f+".name", "%q must be a DNS label of at most 40 characters", p.Name)
		}
		if pods[p.Name] {
			bad(f+".name", "%q is used by another pod", p.Name)
		}
		pods[p.Name] = true
		if !nodes[p.Node] {
			bad(f+".node", "%q is not a node of this lab (nodes are %s)", p.Node, strings.Join(s.NodeNames(), ", "))
		}
		if !nsNames[p.Namespace] {
			bad(f+".namespace", "%q is not declared under namespaces", p.Namespace)
		}
		if w := p.Workload; w != nil {
			if !Workloads[w.Kind] {
				bad(f+".workload.kind", "%q is not a known workload (known: fortio-server)", w.Kind)
			}
			if w.Port < 1 || w.Port > 65535 {
				bad(f+".workload.port", "%d is not a port number", w.Port)
			}
		}
	}
	svcs := map[string]bool{}
	for i, sv := range s.Services {
		f := fmt.Sprintf("services[%d]", i)
		if !dnsLabel.MatchString(sv.Name) {
			bad(f+".name", "%q is not a valid name", sv.Name)
		}
		if key := sv.Namespace + "/" + sv.Name; svcs[key] {
			bad(f+".name", "%q is used by another service in namespace %q", sv.Name, sv.Namespace)
		} else {
			svcs[key] = true
		}
		if !nsNames[sv.Namespace] {
			bad(f+".namespace", "%q is not declared under namespaces", sv.Namespace)
		}
		if len(sv.Selector) == 0 {
			bad(f+".selector", "is empty (a service must select its pods by label)")
		}
		if len(sv.Ports) == 0 {
			bad(f+".ports", "is empty")
		}
		portNames := map[string]bool{}
		for j, p := range sv.Ports {
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			if p.Port < 1 || p.Port > 65535 {
				bad(pf+".port", "%d is not a port number", p.Port)
			}
			if p.TargetPort < 1 || p.TargetPort > 65535 {
				bad(pf+".targetPort", "%d is not a port number", p.TargetPort)
			}
			if p.Protocol != "TCP" && p.Protocol != "UDP" {
				bad(pf+".protocol", "%q must be TCP or UDP", p.Protocol)
			}
			// As in Kubernetes: ports of a multi-port service are told apart by name.
			if len(sv.Ports) > 1 && (p.Name == "" || portNames[p.Name]) {
				bad(pf+".name", "%q: every port of a multi-port service needs a distinct name", p.Name)
			}
			portNames[p.Name] = true
		}
	}
	return errors.Join(errs...)
}

func (n Network) validate(s Spec) []error {
	var errs []error
	type cidr struct {
		field, value string
		v6           bool
		minBits      int // smallest allowed prefix length
		maxBits      int
	}
	// A pod CIDR needs one subnet per node: /24 per node in IPv4, /64 in IPv6.
	podMax4, podMax6 := 24-bitsFor(s.Nodes), 64-bitsFor(s.Nodes)
	checks := []cidr{
		{"network.underlayIPv4", n.UnderlayIPv4, false, 8, 29},
		{"network.podIPv4", n.PodIPv4, false, 8, podMax4},
		{"network.serviceIPv4", n.ServiceIPv4, false, 8, 28},
		{"network.underlayIPv6", n.UnderlayIPv6, true, 48, 120},
		{"network.podIPv6", n.PodIPv6, true, 32, podMax6},
		{"network.serviceIPv6", n.ServiceIPv6, true, 64, 120},
	}
	var parsed []netip.Prefix
	var fields []string
	for _, c := range checks {
		if (c.v6 && !s.HasFamily("ipv6")) || (!c.v6 && !s.HasFamily("ipv4")) {
			continue
		}
		p, err := netip.ParsePrefix(c.value)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %q is not a CIDR", c.field, c.value))
			continue
		case p.Addr().Is6() != c.v6:
			errs = append(errs, fmt.Errorf("%s: %q is not an %s CIDR", c.field, c.value, map[bool]string{false: "IPv4", true: "IPv6"}[c.v6]))
			continue
		case p.Bits() < c.minBits || p.Bits() > c.maxBits:
			errs = append(errs, fmt.Errorf("%s: %q must have a prefix length between /%d and /%d (for %d nodes)", c.field, c.value, c.minBits, c.maxBits, s.Nodes))
			continue
		case p.Masked() != p:
			errs = append(errs, fmt.Errorf("%s: %q has host bits set (did you mean %s?)", c.field, c.value, p.Masked()))
			continue
		}
		for i, q := range parsed {
			if q.Overlaps(p) {
				errs = append(errs, fmt.Errorf("%s: %s overlaps %s (%s)", c.field, p, fields[i], q))
			}
		}
		parsed = append(parsed, p)
		fields = append(fields, c.field)
	}
	return errs
}

// bitsFor returns how many bits index n subnets numbered 1..n (subnet 0 is left unused so that
// node i owns subnet i, which keeps addresses readable: n1 -> 10.244.1.0/24).
func bitsFor(n int) int {
	b := 0
	for 1<<b < n+1 {
		b++
	}
	return b
}

// ParseSpec decodes a YAML cluster spec strictly (unknown fields are errors), applies defaults and
// validates it. name is used in error messages.
func ParseSpec(name string, b []byte) (Spec, error) {
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return Spec{}, fmt.Errorf("%s: %w", name, err)
	}
	s.SetDefaults()
	if err := s.Validate(); err != nil {
		return Spec{}, fmt.Errorf("%s: invalid cluster spec:\n%w", name, err)
	}
	return s, nil
}

// LoadSpec reads and parses a cluster spec file.
func LoadSpec(path string) (Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, err
	}
	return ParseSpec(path, b)
}
