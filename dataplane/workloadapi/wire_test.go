package workloadapi

import (
	"bytes"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// The messages below are written field by field with protowire, using the numbers and wire
// types of Istio's workload.proto (istio.workload), not the generated code: decoding them
// proves that the numbers and types kept here are Istio's.

type msg []byte

func (m msg) str(n protowire.Number, s string) msg {
	m = protowire.AppendTag(m, n, protowire.BytesType)
	return protowire.AppendString(m, s)
}

func (m msg) bytes(n protowire.Number, b []byte) msg {
	m = protowire.AppendTag(m, n, protowire.BytesType)
	return protowire.AppendBytes(m, b)
}

func (m msg) varint(n protowire.Number, v uint64) msg {
	m = protowire.AppendTag(m, n, protowire.VarintType)
	return protowire.AppendVarint(m, v)
}

func (m msg) sub(n protowire.Number, sub msg) msg { return m.bytes(n, sub) }

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// istioWorkload is an istio.workload.Address holding a Workload.
func istioWorkload() []byte {
	ports := msg(nil).sub(1, msg(nil).varint(1, 80).varint(2, 8080).varint(3, 1)) // PortList.ports: Port{service_port, target_port, app_protocol=HTTP11}
	entry := msg(nil).str(1, "demo/echo.demo.svc.cluster.local").sub(2, ports)    // map entry: key 1, value 2
	w := msg(nil).
		str(20, "Kubernetes//Pod/demo/echo-1").
		str(1, "echo-1").
		str(2, "demo").
		bytes(3, ip("10.244.1.5")).
		bytes(3, ip("fd00:10:244:1::5")).
		str(4, "net1").
		varint(5, 1). // tunnel_protocol HBONE
		str(6, "cluster.local").
		str(7, "echo-sa").
		sub(8, msg(nil).sub(2, msg(nil).str(1, "net1").bytes(2, ip("10.96.0.99"))).varint(3, 15008)).
		sub(19, msg(nil).sub(1, msg(nil).str(1, "istio-system").str(2, "eastwest.istio-system.svc.cluster.local"))).
		str(9, "n1").
		str(10, "echo").
		str(11, "v1").
		varint(12, 2). // workload_type POD
		str(13, "echo-deploy").
		varint(14, 1).             // native_tunnel: trimmed here, must survive as an unknown field
		str(16, "demo/allow-all"). // authorization_policies: trimmed
		sub(22, entry).            // services
		varint(17, 1).             // status UNHEALTHY
		str(18, "Kubernetes").     // cluster_id
		sub(24, msg(nil).str(1, "r1").str(2, "z1").str(3, "s1")).
		varint(25, 1).                 // network_mode HOST_NETWORK
		sub(27, msg(nil).varint(1, 3)) // capacity: UInt32Value{value: 3}
	return msg(nil).sub(1, w)
}

// istioService is an istio.workload.Address holding a Service.
func istioService() []byte {
	s := msg(nil).
		str(1, "echo").
		str(2, "demo").
		str(3, "echo.demo.svc.cluster.local").
		sub(4, msg(nil).str(1, "net1").bytes(2, ip("10.96.0.10"))).
		sub(4, msg(nil).bytes(2, ip("fd00:10:96::a")).varint(3, 128)).
		sub(5, msg(nil).varint(1, 80).varint(2, 8080).varint(3, 2)).
		sub(5, msg(nil).varint(1, 443)). // target_port 0: not on the wire
		str(6, "spiffe://cluster.local/ns/demo/sa/echo").
		sub(7, msg(nil).sub(1, msg(nil).str(1, "demo").str(2, "waypoint.demo.svc.cluster.local")).varint(3, 15008)).
		sub(8, msg(nil).varint(1, 2).varint(1, 1).varint(2, 2).varint(3, 1)). // routing_preference ZONE, REGION; FAILOVER; ALLOW_ALL
		varint(9, 3).                                                         // DUAL
		varint(11, 1)                                                         // canonical: trimmed
	return msg(nil).sub(2, s)
}

func TestWorkloadWireCompatible(t *testing.T) {
	raw := istioWorkload()
	var a Address
	if err := proto.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	w := a.GetWorkload()
	if w == nil {
		t.Fatalf("Address.workload (field 1) not decoded: %v", &a)
	}
	for _, c := range []struct{ field, got, want string }{
		{"uid", w.GetUid(), "Kubernetes//Pod/demo/echo-1"},
		{"name", w.GetName(), "echo-1"},
		{"namespace", w.GetNamespace(), "demo"},
		{"network", w.GetNetwork(), "net1"},
		{"trust_domain", w.GetTrustDomain(), "cluster.local"},
		{"service_account", w.GetServiceAccount(), "echo-sa"},
		{"node", w.GetNode(), "n1"},
		{"canonical_name", w.GetCanonicalName(), "echo"},
		{"canonical_revision", w.GetCanonicalRevision(), "v1"},
		{"workload_name", w.GetWorkloadName(), "echo-deploy"},
		{"cluster_id", w.GetClusterId(), "Kubernetes"},
		{"locality", w.GetLocality().GetRegion() + "/" + w.GetLocality().GetZone() + "/" + w.GetLocality().GetSubzone(), "r1/z1/s1"},
		{"network_gateway", w.GetNetworkGateway().GetHostname().GetHostname(), "eastwest.istio-system.svc.cluster.local"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
		}
	}
	if len(w.GetAddresses()) != 2 || !bytes.Equal(w.GetAddresses()[0], ip("10.244.1.5")) || !bytes.Equal(w.GetAddresses()[1], ip("fd00:10:244:1::5")) {
		t.Errorf("addresses = %v", w.GetAddresses())
	}
	if w.GetTunnelProtocol() != TunnelProtocol_HBONE || w.GetWorkloadType() != WorkloadType_POD ||
		w.GetStatus() != WorkloadStatus_UNHEALTHY || w.GetNetworkMode() != NetworkMode_HOST_NETWORK {
		t.Errorf("enums: tunnel %v type %v status %v mode %v", w.GetTunnelProtocol(), w.GetWorkloadType(), w.GetStatus(), w.GetNetworkMode())
	}
	if w.GetCapacity() == nil || w.GetCapacity().GetValue() != 3 {
		t.Errorf("capacity = %v, want 3", w.GetCapacity())
	}
	wp := w.GetWaypoint()
	if !bytes.Equal(wp.GetAddress().GetAddress(), ip("10.96.0.99")) || wp.GetAddress().GetNetwork() != "net1" || wp.GetHboneMtlsPort() != 15008 {
		t.Errorf("waypoint = %v", wp)
	}
	pl := w.GetServices()["demo/echo.demo.svc.cluster.local"]
	if len(w.GetServices()) != 1 || len(pl.GetPorts()) != 1 {
		t.Fatalf("services = %v", w.GetServices())
	}
	if p := pl.GetPorts()[0]; p.GetServicePort() != 80 || p.GetTargetPort() != 8080 || p.GetAppProtocol() != AppProtocol_HTTP11 {
		t.Errorf("port = %v", p)
	}
	// Trimmed fields are kept as unknown fields, so re-encoding loses nothing.
	if len(w.ProtoReflect().GetUnknown()) == 0 {
		t.Error("trimmed fields 14 and 16 were not kept as unknown fields")
	}
	assertRoundTrip(t, &a, raw)
}

func TestServiceWireCompatible(t *testing.T) {
	raw := istioService()
	var a Address
	if err := proto.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	s := a.GetService()
	if s == nil {
		t.Fatalf("Address.service (field 2) not decoded: %v", &a)
	}
	if s.GetName() != "echo" || s.GetNamespace() != "demo" || s.GetHostname() != "echo.demo.svc.cluster.local" {
		t.Errorf("name/namespace/hostname = %q %q %q", s.GetName(), s.GetNamespace(), s.GetHostname())
	}
	addrs := s.GetAddresses()
	if len(addrs) != 2 || addrs[0].GetNetwork() != "net1" || !bytes.Equal(addrs[0].GetAddress(), ip("10.96.0.10")) || addrs[0].Length != nil ||
		!bytes.Equal(addrs[1].GetAddress(), ip("fd00:10:96::a")) || addrs[1].Length == nil || addrs[1].GetLength() != 128 {
		t.Errorf("addresses = %v", addrs)
	}
	ports := s.GetPorts()
	if len(ports) != 2 || ports[0].GetServicePort() != 80 || ports[0].GetTargetPort() != 8080 || ports[0].GetAppProtocol() != AppProtocol_HTTP2 ||
		ports[1].GetServicePort() != 443 || ports[1].GetTargetPort() != 0 {
		t.Errorf("ports = %v", ports)
	}
	if got := s.GetSubjectAltNames(); len(got) != 1 || got[0] != "spiffe://cluster.local/ns/demo/sa/echo" {
		t.Errorf("subject_alt_names = %v", got)
	}
	wp := s.GetWaypoint()
	if wp.GetHostname().GetNamespace() != "demo" || wp.GetHostname().GetHostname() != "waypoint.demo.svc.cluster.local" || wp.GetHboneMtlsPort() != 15008 {
		t.Errorf("waypoint = %v", wp)
	}
	lb := s.GetLoadBalancing()
	if rp := lb.GetRoutingPreference(); len(rp) != 2 || rp[0] != LoadBalancing_ZONE || rp[1] != LoadBalancing_REGION ||
		lb.GetMode() != LoadBalancing_FAILOVER || lb.GetHealthPolicy() != LoadBalancing_ALLOW_ALL {
		t.Errorf("load_balancing = %v", lb)
	}
	if s.GetIpFamilies() != IPFamilies_DUAL {
		t.Errorf("ip_families = %v", s.GetIpFamilies())
	}
	assertRoundTrip(t, &a, raw)
}

// assertRoundTrip: the message re-encodes to bytes that decode to the same message (unknown
// fields included), and the generated descriptor has Istio's field numbers.
func assertRoundTrip(t *testing.T, m proto.Message, raw []byte) {
	t.Helper()
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	again := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(out, again); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(m, again) {
		t.Errorf("round trip changed the message:\n%v\n%v", m, again)
	}
	if len(out) != len(raw) {
		t.Errorf("re-encoded %d bytes, Istio's encoding has %d", len(out), len(raw))
	}
}

// TestFieldNumbers pins every kept field's number to Istio's, from the descriptor.
func TestFieldNumbers(t *testing.T) {
	want := map[string]map[string]protowire.Number{
		"Address":            {"workload": 1, "service": 2},
		"Service":            {"name": 1, "namespace": 2, "hostname": 3, "addresses": 4, "ports": 5, "subject_alt_names": 6, "waypoint": 7, "load_balancing": 8, "ip_families": 9},
		"Workload":           {"uid": 20, "name": 1, "namespace": 2, "addresses": 3, "hostname": 21, "network": 4, "tunnel_protocol": 5, "trust_domain": 6, "service_account": 7, "waypoint": 8, "network_gateway": 19, "node": 9, "canonical_name": 10, "canonical_revision": 11, "workload_type": 12, "workload_name": 13, "services": 22, "status": 17, "cluster_id": 18, "locality": 24, "network_mode": 25, "capacity": 27},
		"LoadBalancing":      {"routing_preference": 1, "mode": 2, "health_policy": 3},
		"Locality":           {"region": 1, "zone": 2, "subzone": 3},
		"PortList":           {"ports": 1},
		"Port":               {"service_port": 1, "target_port": 2, "app_protocol": 3},
		"GatewayAddress":     {"hostname": 1, "address": 2, "hbone_mtls_port": 3},
		"NetworkAddress":     {"network": 1, "address": 2, "length": 3},
		"NamespacedHostname": {"namespace": 1, "hostname": 2},
	}
	fd := File_dataplane_workloadapi_workload_proto
	for name, fields := range want {
		md := fd.Messages().ByName(protoreflect.Name(name))
		if md == nil {
			t.Errorf("message %s missing", name)
			continue
		}
		if md.Fields().Len() != len(fields) {
			t.Errorf("%s has %d fields, want %d", name, md.Fields().Len(), len(fields))
		}
		for f, n := range fields {
			fdesc := md.Fields().ByName(protoreflect.Name(f))
			if fdesc == nil || fdesc.Number() != n {
				t.Errorf("%s.%s: %v, want number %d", name, f, fdesc, n)
			}
		}
	}
	if string(fd.Package()) != "onehop.workloadapi" {
		t.Errorf("package %s", fd.Package())
	}
}

// An Any under Istio's type URL unpacks into Address: only the name differs.
func TestTypeURLIsIstios(t *testing.T) {
	a := &anypb.Any{TypeUrl: TypeURL, Value: istioService()}
	var out Address
	if err := proto.Unmarshal(a.GetValue(), &out); err != nil || out.GetService().GetName() != "echo" {
		t.Fatalf("decode: %v %v", err, &out)
	}
	if own := "type.googleapis.com/" + string((&Address{}).ProtoReflect().Descriptor().FullName()); own == TypeURL {
		t.Fatalf("TypeURL %s must be Istio's, not this package's name", TypeURL)
	}
}
