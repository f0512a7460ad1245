package xds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// IstioVersion is the Istio release whose xDS generator onehop is tested against
// (interop/istiod), and the ISTIO_VERSION it reports unless told otherwise: istiod shapes
// some config by the proxy's version.
const IstioVersion = "1.31.0"

// Identity is who the agent is to istiod. istiod refuses a node id that is not
// <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>, and reads the rest from node
// metadata: without CLUSTER_ID it withholds the endpoints of cluster-local services.
type Identity struct {
	// ProxyType is "sidecar" (Envoy-style LDS/RDS/CDS/EDS of one namespace's view) or
	// "ztunnel" (the ambient workload API of the whole mesh).
	ProxyType string
	IP        netip.Addr // the agent pod's IP; hostNetwork: the node's
	PodName   string
	Namespace string // the agent's namespace; a sidecar sees what is exported to it
	NodeName  string
	DNSDomain string // cluster domain, e.g. cluster.local
	ClusterID string // istiod's name of this cluster ("Kubernetes" unless multicluster)
	Version   string // ISTIO_VERSION to report
	Labels    map[string]string
	// RawID, when set, is sent as the node id as is (it must have istiod's four parts).
	RawID string
}

// ProxyTypes are the node types onehop can be: istiod gives other types (router, waypoint)
// gateway config, not the mesh's services.
var ProxyTypes = []string{"sidecar", "ztunnel"}

// Check says what is wrong with the identity, naming the flag to fix.
func (id Identity) Check() error {
	if !slices.Contains(ProxyTypes, id.ProxyType) {
		return fmt.Errorf("proxy type %q: onehop is a %s to istiod (other types get gateway config, not the mesh's services)", id.ProxyType, strings.Join(ProxyTypes, " or a "))
	}
	if id.RawID != "" {
		if p := strings.Split(id.RawID, "~"); len(p) != 4 || p[0] != id.ProxyType {
			return fmt.Errorf("node id %q: want %s~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>", id.RawID, id.ProxyType)
		}
		return nil
	}
	if !id.IP.IsValid() {
		return errors.New("no node IP: set --node-ip (in Kubernetes, status.podIP of the agent's hostNetwork pod)")
	}
	for _, f := range []struct{ name, v string }{{"pod name", id.PodName}, {"namespace", id.Namespace}, {"DNS domain", id.DNSDomain}, {"cluster id", id.ClusterID}} {
		if f.v == "" || strings.ContainsAny(f.v, "~ ") {
			return fmt.Errorf("%s %q: must be set, without '~' or spaces", f.name, f.v)
		}
	}
	return nil
}

// ID is the node id istiod parses.
func (id Identity) ID() string {
	if id.RawID != "" {
		return id.RawID
	}
	return fmt.Sprintf("%s~%s~%s.%s~%s.svc.%s", id.ProxyType, id.IP, id.PodName, id.Namespace, id.Namespace, id.DNSDomain)
}

// Node is the xDS node: id, cluster and the metadata istiod reads (what istio-agent sends for
// a proxy, as far as it concerns a node agent).
func (id Identity) Node() *corev3.Node {
	labels := map[string]any{}
	for k, v := range id.Labels {
		labels[k] = v
	}
	md := map[string]any{
		"CLUSTER_ID":    id.ClusterID,
		"ISTIO_VERSION": id.Version,
		"NAMESPACE":     id.Namespace,
		"NODE_NAME":     id.NodeName,
		"LABELS":        labels,
		"WORKLOAD_NAME": id.PodName,
	}
	if id.IP.IsValid() {
		md["INSTANCE_IPS"] = id.IP.String()
	}
	st, err := structpb.NewStruct(md)
	if err != nil { // only strings and a map of strings: cannot fail
		panic(err)
	}
	return &corev3.Node{Id: id.ID(), Cluster: id.PodName + "." + id.Namespace, Metadata: st, UserAgentName: "onehop-agent"}
}

// HostIP is the first global unicast address of the host's interfaces, IPv4 first: the
// default node IP of an agent with host networking.
func HostIP() (netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, err
	}
	var v6 netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().IsGlobalUnicast() {
			continue
		}
		if p.Addr().Is4() {
			return p.Addr(), nil
		}
		if !v6.IsValid() {
			v6 = p.Addr()
		}
	}
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, errors.New("no global unicast address on any interface: set --node-ip")
}
