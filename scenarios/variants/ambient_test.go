package variants

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/clusters/pki"
)

// ambientLab brings up a two-node lab with a namespace "mesh" labelled for v (client mesh-client
// on n1; server mesh-web-1 on n1 behind service "same", mesh-web-2 on n2 behind "cross", both
// port 80 -> 8080) and a namespace "plain" (client plain-client on n1, server plain-web on n2
// behind service "web"), then installs v (unless pods is false: then the lab has the
// namespaces only). It returns Install's error; the variant is uninstalled (checked) and the
// lab removed when the test ends, whatever happens.
func ambientLab(t *testing.T, v *Ambient, pods bool) (*netns.Cluster, error) {
	t.Helper()
	if _, err := HAProxyVersion(); err != nil {
		t.Skip(err)
	}
	_, p, name := testProvider(t, "ta")
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "mesh", Labels: v.Labels()}, {Name: "plain"}}}
	server := func(pod, ns, node, app string) clusters.PodSpec {
		return clusters.PodSpec{Name: pod, Namespace: ns, Node: node, Labels: map[string]string{"app": app}, Component: "server",
			Workload: &clusters.Workload{Kind: "fortio-server", Port: 8080}}
	}
	svc := func(name, ns, app string) clusters.ServiceDef {
		return clusters.ServiceDef{Name: name, Namespace: ns, Selector: map[string]string{"app": app},
			Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}
	}
	if pods {
		spec.Pods = []clusters.PodSpec{
			{Name: "mesh-client", Namespace: "mesh", Node: "n1", Component: "client"},
			server("mesh-web-1", "mesh", "n1", "web-same"), server("mesh-web-2", "mesh", "n2", "web-cross"),
			{Name: "plain-client", Namespace: "plain", Node: "n1", Component: "client"},
			server("plain-web", "plain", "n2", "plain-web"),
		}
		spec.Services = []clusters.ServiceDef{svc("same", "mesh", "web-same"), svc("cross", "mesh", "web-cross"), svc("web", "plain", "plain-web")}
	}
	return upAndInstall(t, p, spec, v)
}

func mustAmbientLab(t *testing.T, v *Ambient) *netns.Cluster {
	t.Helper()
	c, err := ambientLab(t, v, true)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ambientSessions reads a tcp-mode frontend's or backend's session counter from a node proxy.
func ambientSessions(t *testing.T, v *Ambient, node, proxy string) int {
	t.Helper()
	h := v.NodeProxy(node)
	if h == nil {
		t.Fatalf("no node proxy on %s", node)
	}
	n, err := tcpSessions(h, proxy)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ambientStat reads one numeric column of a node proxy's frontend from show stat.
func ambientStat(t *testing.T, v *Ambient, node, frontend, column string) int {
	t.Helper()
	stats, err := v.NodeProxy(node).ShowStat()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s["pxname"] == frontend && s["svname"] == "FRONTEND" {
			n, err := strconv.Atoi(s[column])
			if err != nil {
				t.Fatalf("%s %s: %v", frontend, column, err)
			}
			return n
		}
	}
	t.Fatalf("no frontend %s on %s", frontend, node)
	return 0
}

// ambientHTTP sends one HTTP/1.1 keep-alive request on an open connection.
func ambientHTTP(conn net.Conn, r *bufio.Reader) (int, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestAmbient runs the ambient variant on one lab (labs are slow to make on a 2-core machine):
// VIP traffic same-node and cross-node through both node proxies, the application's connection
// ending at its node proxy's listener in the pod, mutual TLS on the tunnel, restarts, and an
// uninstall that leaves nothing.
func TestAmbient(t *testing.T) {
	v := &Ambient{}
	c := mustAmbientLab(t, v)
	ctx := context.Background()

	t.Run("VIPThroughBothNodeProxies", func(t *testing.T) {
		for _, tc := range []struct{ svc, server, node string }{{"same", "mesh-web-1", "n1"}, {"cross", "mesh-web-2", "n2"}} {
			vip := serviceIP(t, c, "mesh", tc.svc)
			backend := "out:" + vip + ":80"
			out0, be0, in0 := ambientSessions(t, v, "n1", "outbound"), ambientSessions(t, v, "n1", backend), ambientSessions(t, v, tc.node, "tunnel")
			for i := 0; i < 5; i++ {
				status, peer := get(t, c, "mesh-client", "http://"+vip+"/echo")
				if status != "200" {
					t.Fatalf("%s: request %d to %s: status %q", tc.svc, i, vip, status)
				}
				if peer != vip+":80" { // the capture is invisible to the application
					t.Errorf("%s: the client saw peer %s, want %s:80", tc.svc, peer, vip)
				}
			}
			out1, be1, in1 := ambientSessions(t, v, "n1", "outbound"), ambientSessions(t, v, "n1", backend), ambientSessions(t, v, tc.node, "tunnel")
			if out1-out0 < 5 || be1-be0 < 5 {
				t.Errorf("%s: n1's node proxy took %d connections (%d in %s), want >= 5", tc.svc, out1-out0, be1-be0, backend)
			}
			if in1-in0 < 5 {
				t.Errorf("%s: %s's node proxy took %d tunnel connections, want >= 5", tc.svc, tc.node, in1-in0)
			}
			if n := ambientSessions(t, v, tc.node, "in:"+tc.server); n < 5 {
				t.Errorf("%s: %s's node proxy delivered %d connections to %s, want >= 5", tc.svc, tc.node, n, tc.server)
			}
		}
		// The service NAT rules never saw the client's connections: the node proxy balanced them.
		if n := natPackets(t, c, serviceIP(t, c, "mesh", "same")); n != 0 {
			t.Errorf("%d packets to the VIP went through the node's service NAT", n)
		}
	})

	t.Run("PodIPThroughTheTunnel", func(t *testing.T) {
		in0 := ambientSessions(t, v, "n2", "tunnel")
		if status, _ := get(t, c, "mesh-client", "http://"+podIP(t, c, "mesh-web-2")+":8080/echo"); status != "200" {
			t.Fatalf("to the pod IP: status %q", status)
		}
		if n := ambientSessions(t, v, "n2", "tunnel") - in0; n != 1 {
			t.Errorf("n2's node proxy took %d tunnel connections for one request to a mesh pod's IP, want 1", n)
		}
		// Outside the mesh: plaintext from the node, no tunnel.
		if status, _ := get(t, c, "mesh-client", "http://"+podIP(t, c, "plain-web")+":8080/echo"); status != "200" {
			t.Fatalf("to a pod outside the mesh: status %q", status)
		}
		if n := ambientSessions(t, v, "n1", "passthrough"); n < 1 {
			t.Errorf("the request to a pod outside the mesh did not pass through (passthrough sessions %d)", n)
		}
	})

	t.Run("AppTalksToTheListenerInItsPod", func(t *testing.T) {
		conn, err := c.Dial(ctx, "mesh-client", "tcp", serviceIP(t, c, "mesh", "cross")+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if status, err := ambientHTTP(conn, bufio.NewReader(conn)); err != nil || status != 200 {
			t.Fatalf("status %d, %v", status, err)
		}
		out, err := podRun(ctx, c, "mesh-client", "ss", "ss", "-Htnp")
		if err != nil {
			t.Fatal(err)
		}
		app, server := conn.LocalAddr().String(), podIP(t, c, "mesh-web-2")+":8080"
		var proxyHasApp bool
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 || f[0] != "ESTAB" {
				continue
			}
			if f[3] == "127.0.0.1:"+strconv.Itoa(ZtunnelOutboundPort) && f[4] == app && strings.Contains(line, `"haproxy"`) {
				proxyHasApp = true
			}
			if f[4] == server {
				t.Errorf("the client pod has a connection to the server itself: %s", line)
			}
		}
		if !proxyHasApp {
			t.Errorf("want HAProxy on 127.0.0.1:%d in the client pod connected to the app's %s; ss -tnp:\n%s", ZtunnelOutboundPort, app, out)
		}
	})

	t.Run("TunnelIsMutualTLS", func(t *testing.T) {
		n2 := c.NodeAddresses("n2")[0].String()
		tunnel := net.JoinHostPort(n2, strconv.Itoa(HBONEPort))
		// Plaintext HTTP to the tunnel port, from a pod outside the mesh: no answer.
		if status, _ := get(t, c, "plain-client", "http://"+tunnel+"/echo"); status == "200" {
			t.Fatalf("plaintext to %s got 200: the tunnel is not TLS", tunnel)
		}
		ca, err := pki.LoadOrCreate(filepath.Join(c.RuntimeDir(), "pki", "ca"))
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(ca.PEM)
		web2, _ := c.Pod("mesh-web-2")
		sni := tunnelSNI(8080, web2)
		request := func(certs []tls.Certificate, sni string) (string, error) {
			conn, err := c.Dial(ctx, "plain-client", "tcp", tunnel)
			if err != nil {
				return "", err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			tc := tls.Client(conn, &tls.Config{RootCAs: roots, Certificates: certs, ServerName: sni})
			if err := tc.Handshake(); err != nil {
				return "", err
			}
			status, err := ambientHTTP(tc, bufio.NewReader(tc))
			if err != nil {
				return "", err
			}
			if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
				t.Errorf("the tunnel negotiated %s, want TLS 1.3", tls.VersionName(v))
			}
			return fmt.Sprintf("%d %s", status, tc.ConnectionState().PeerCertificates[0].URIs[0]), nil
		}
		issue := func(ca *pki.CA) []tls.Certificate {
			w, err := ca.Issue(t.TempDir(), pki.Identity("plain", "plain-client"), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := tls.LoadX509KeyPair(w.Cert, w.Key)
			if err != nil {
				t.Fatal(err)
			}
			return []tls.Certificate{cert}
		}
		// The control: with a lab certificate and an endpoint's name, the tunnel delivers.
		if got, err := request(issue(ca), sni); err != nil || got != "200 spiffe://cluster.local/ns/istio-system/sa/ztunnel" {
			t.Errorf("with a lab certificate: %q, %v; want 200 from the ztunnel identity", got, err)
		}
		if got, err := request(nil, sni); err == nil {
			t.Errorf("without a client certificate: %q, want a refused handshake", got)
		}
		other, err := pki.LoadOrCreate(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if got, err := request(issue(other), sni); err == nil {
			t.Errorf("with a certificate of another CA: %q, want a refused handshake", got)
		}
		// A lab certificate does not open the tunnel to a pod of another node or outside the mesh.
		for _, bad := range []string{tunnelSNI(8080, clusters.Pod{PodSpec: clusters.PodSpec{Name: "mesh-web-1", Node: "n2"}}),
			tunnelSNI(8080, clusters.Pod{PodSpec: clusters.PodSpec{Name: "plain-web", Node: "n2"}})} {
			if got, err := request(issue(ca), bad); err == nil {
				t.Errorf("SNI %s: %q, want no delivery", bad, got)
			}
		}
	})

	// The source node proxy checks that the tunnel's other end is the endpoint's node: sent to
	// n1's proxy instead of n2's, a connection for an n2 endpoint fails the handshake.
	t.Run("SourceVerifiesTheDestinationNode", func(t *testing.T) {
		n1, n2 := c.NodeAddresses("n1")[0].String(), c.NodeAddresses("n2")[0].String()
		resync := func(edit func(node string, cfg []byte) []byte) {
			v.mu.Lock()
			v.editConfig = edit
			v.mu.Unlock()
			client, _ := c.Pod("mesh-client")
			if err := v.AddPod(ctx, c, client); err != nil { // a sync
				t.Fatal(err)
			}
		}
		resync(func(node string, cfg []byte) []byte {
			if node != "n1" {
				return cfg
			}
			return []byte(strings.ReplaceAll(string(cfg), fmt.Sprintf("%s:%d", n2, HBONEPort), fmt.Sprintf("%s:%d", n1, HBONEPort)))
		})
		defer resync(nil)
		failed0 := ambientStat(t, v, "n1", "tunnel", "ssl_failed_handshake")
		if status, _ := get(t, c, "mesh-client", "http://"+serviceIP(t, c, "mesh", "cross")+"/echo"); status == "200" {
			t.Error("a connection for an n2 endpoint was accepted by n1's proxy")
		}
		// n1 counts the handshake as failed when it reads the source's alert, which may come
		// after curl has already given up: wait a little for the counter.
		n := 0
		for deadline := time.Now().Add(2 * time.Second); n < 1 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			n = ambientStat(t, v, "n1", "tunnel", "ssl_failed_handshake") - failed0
		}
		if n < 1 {
			t.Errorf("n1's tunnel saw %d failed handshakes, want the source to refuse its certificate", n)
		}
	})

	// New pods join the mesh (their node proxy listens in them, their traffic is captured, new
	// endpoints get their share), and a pod deleted and created again under the same name is
	// captured again in its new network namespace.
	t.Run("FollowsPods", func(t *testing.T) {
		web3, err := c.CreatePod(ctx, clusters.PodSpec{Name: "mesh-web-3", Namespace: "mesh", Node: "n2",
			Labels: map[string]string{"app": "web-cross"}, Workload: &clusters.Workload{Kind: "fortio-server", Port: 8080}})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.AddPod(ctx, c, web3); err != nil {
			t.Fatal(err)
		}
		vip := serviceIP(t, c, "mesh", "cross")
		for i := 0; i < 4; i++ {
			if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
				t.Fatalf("request %d after the new endpoint: status %q", i, status)
			}
		}
		if n := ambientSessions(t, v, "n2", "in:mesh-web-3"); n != 2 {
			t.Errorf("the new endpoint got %d of 4 round-robin connections, want 2", n)
		}
		for round := 0; round < 2; round++ {
			if round == 1 { // as a crash would: no RemovePod
				if err := c.DeletePod(ctx, "mesh-client-2"); err != nil {
					t.Fatal(err)
				}
			}
			p, err := c.CreatePod(ctx, clusters.PodSpec{Name: "mesh-client-2", Namespace: "mesh", Node: "n1", Component: "client"})
			if err != nil {
				t.Fatal(err)
			}
			if err := v.AddPod(ctx, c, p); err != nil {
				t.Fatal(err)
			}
			out0 := ambientSessions(t, v, "n1", "outbound")
			if status, _ := get(t, c, "mesh-client-2", "http://"+vip+"/echo"); status != "200" {
				t.Fatalf("round %d: from the new client: status %q", round, status)
			}
			if n := ambientSessions(t, v, "n1", "outbound") - out0; n != 1 {
				t.Errorf("round %d: n1's node proxy took %d connections from the new client, want 1", round, n)
			}
		}
		for _, name := range []string{"mesh-client-2", "mesh-web-3"} {
			p, _ := c.Pod(name)
			if err := v.RemovePod(ctx, c, p); err != nil {
				t.Fatal(err)
			}
			if err := c.DeletePod(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 3; i++ {
			if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
				t.Fatalf("request %d after the endpoint left: status %q", i, status)
			}
		}
	})

	t.Run("Restart", func(t *testing.T) {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			vip := serviceIP(t, c, "mesh", "cross")
			// A keep-alive connection the restarted proxy carries.
			conn, err := c.Dial(ctx, "mesh-client", "tcp", vip+":80")
			if err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(conn)
			if status, err := ambientHTTP(conn, r); err != nil || status != 200 {
				t.Fatalf("before the restart: status %d, %v", status, err)
			}
			old := v.NodeProxy("n1").Process().Process.Pid
			ev, err := v.Restart(ctx, c, "n1", sig)
			if err != nil {
				t.Fatalf("restart with %v: %v", sig, err)
			}
			t.Logf("%s: %s, ready after %.1f ms", ev.Signal, ev.Daemon, ev.ReadyMS)
			if pid := v.NodeProxy("n1").Process().Process.Pid; pid == old || ev.ReadyMS <= 0 {
				t.Errorf("%v: the node proxy is still pid %d (event %+v)", sig, pid, ev)
			}
			status, err := ambientHTTP(conn, r)
			conn.Close()
			t.Logf("%s: the keep-alive connection through the restarted proxy: status %d, %v", unix.SignalName(sig), status, err)
			if err == nil {
				t.Errorf("%v: a connection the node proxy carried survived its restart (status %d)", sig, status)
			}
			for _, svc := range []string{"same", "cross"} {
				vip := serviceIP(t, c, "mesh", svc)
				out0 := ambientSessions(t, v, "n1", "outbound")
				if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
					t.Fatalf("after %v, %s: status %q", sig, svc, status)
				}
				if ambientSessions(t, v, "n1", "outbound") != out0+1 {
					t.Errorf("after %v, %s: the request did not go through the new node proxy", sig, svc)
				}
			}
		}
		if pids := labHAProxies(t, c); len(pids) != 2*2 { // a master and a worker per node
			t.Errorf("%d HAProxy processes in the lab after the restarts, want 4 (old ones left?): %v", len(pids), pids)
		}
	})

	t.Run("UninstallLeavesNothing", func(t *testing.T) {
		if err := v.Uninstall(ctx, c); err != nil {
			t.Fatal(err)
		}
		if pids := labHAProxies(t, c); len(pids) > 0 {
			t.Errorf("HAProxy still runs in the lab: pids %v", pids)
		}
		for _, p := range c.Pods() {
			out, err := podRun(ctx, c, p.Name, "iptables-save", "iptables-save", "-t", "nat")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "ONEHOP-") {
				t.Errorf("pod %s keeps capture rules:\n%s", p.Name, out)
			}
		}
		for _, dir := range []string{"ambient", "pki", "waypoint"} {
			if _, err := os.Stat(filepath.Join(c.RuntimeDir(), dir)); !os.IsNotExist(err) {
				t.Errorf("%s is left (%v)", filepath.Join(c.RuntimeDir(), dir), err)
			}
		}
		vip := serviceIP(t, c, "mesh", "same")
		before := natPackets(t, c, vip)
		if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
			t.Errorf("after uninstall: status %q", status)
		}
		if natPackets(t, c, vip) == before {
			t.Error("after uninstall the VIP is not served by the node's service rules")
		}
	})
}

// TestAmbientRejectedConfigNamesTheNode: a node proxy config HAProxy rejects fails Install with
// an error naming the node and HAProxy's complaint, and starts no proxy.
func TestAmbientRejectedConfigNamesTheNode(t *testing.T) {
	v := &Ambient{editConfig: func(node string, cfg []byte) []byte {
		if node == "n2" {
			return append(cfg, "    no-such-directive on\n"...)
		}
		return cfg
	}}
	c, err := ambientLab(t, v, false)
	if err == nil {
		t.Fatal("Install accepted a config HAProxy rejects")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "node n2") || !strings.Contains(err.Error(), "no-such-directive") {
		t.Errorf("error %q does not name the node and the rejected directive", err)
	}
	if pids := labHAProxies(t, c); len(pids) > 0 {
		t.Errorf("the failed install left HAProxy running: pids %v", pids)
	}
	if _, err := os.Stat(filepath.Join(c.RuntimeDir(), "ambient")); !os.IsNotExist(err) {
		t.Errorf("the failed install left its directory (%v)", err)
	}
}

// TestAmbientWaypoint: with ambient-waypoint, a service's requests go from the client's node
// proxy to the service's waypoint and from there through the endpoint's node proxy; a standalone
// waypoint (DeployWaypoint) serves a plain namespace's service; a waypoint config HAProxy rejects
// names the waypoint's pod; uninstall leaves nothing.
func TestAmbientWaypoint(t *testing.T) {
	v := &Ambient{Waypoints: true}
	c := mustAmbientLab(t, v)
	ctx := context.Background()

	t.Run("ThroughTheWaypoint", func(t *testing.T) {
		for _, tc := range []struct{ svc, server, node string }{{"same", "mesh-web-1", "n1"}, {"cross", "mesh-web-2", "n2"}} {
			w := v.Waypoint("mesh", tc.svc)
			if w == nil {
				t.Fatalf("service %s has no waypoint", tc.svc)
			}
			vip := serviceIP(t, c, "mesh", tc.svc)
			req0, err := w.Requests()
			if err != nil {
				t.Fatal(err)
			}
			out0, in0 := ambientSessions(t, v, "n1", "outbound"), ambientSessions(t, v, tc.node, "in:"+tc.server)
			for i := 0; i < 5; i++ {
				if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
					t.Fatalf("%s: request %d: status %q", tc.svc, i, status)
				}
			}
			req1, err := w.Requests()
			if err != nil {
				t.Fatal(err)
			}
			if req1-req0 != 5 {
				t.Errorf("%s: the waypoint counted %d requests, want 5", tc.svc, req1-req0)
			}
			if n := ambientSessions(t, v, "n1", "outbound") - out0; n < 5 {
				t.Errorf("%s: n1's node proxy took %d connections, want >= 5", tc.svc, n)
			}
			// The waypoint pools its connections (http-reuse): at least its first one went
			// through the endpoint's node proxy.
			if n := ambientSessions(t, v, tc.node, "in:"+tc.server) - in0; n < 1 {
				t.Errorf("%s: %s's node proxy delivered nothing to %s: the waypoint did not use the tunnel", tc.svc, tc.node, tc.server)
			}
		}
	})

	t.Run("StandaloneWaypoint", func(t *testing.T) {
		w, err := DeployWaypoint(ctx, c, "plain", "web", false)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop(ctx)
		if w.Addr().Port() != 80 || w.Pod().Node != WaypointNode {
			t.Errorf("waypoint at %s on %s, want port 80 on %s", w.Addr(), w.Pod().Node, WaypointNode)
		}
		for i := 0; i < 3; i++ {
			if status, _ := get(t, c, "plain-client", "http://"+w.Addr().String()+"/echo"); status != "200" {
				t.Fatalf("request %d to the waypoint %s: status %q", i, w.Addr(), status)
			}
		}
		if n, err := w.Requests(); err != nil || n != 3 {
			t.Errorf("the waypoint counted %d requests (%v), want 3", n, err)
		}
		pod, dir := w.Pod().Name, filepath.Join(c.RuntimeDir(), "waypoint", w.Pod().Name)
		if err := w.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Pod(pod); ok {
			t.Errorf("the waypoint's pod %s outlived Stop", pod)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s is left (%v)", dir, err)
		}
	})

	t.Run("RejectedConfigNamesThePod", func(t *testing.T) {
		_, err := deployWaypoint(ctx, c, "plain", "web", waypointOptions{editConfig: func(cfg []byte) []byte {
			return append(cfg, "    no-such-directive on\n"...)
		}})
		if err == nil {
			t.Fatal("a waypoint config HAProxy rejects was accepted")
		}
		t.Log(err)
		if !strings.Contains(err.Error(), "pod "+waypointPodName("plain", "web")) || !strings.Contains(err.Error(), "no-such-directive") {
			t.Errorf("error %q does not name the waypoint's pod and the rejected directive", err)
		}
		if _, ok := c.Pod(waypointPodName("plain", "web")); ok {
			t.Error("the failed waypoint left its pod")
		}
	})

	t.Run("UninstallLeavesNothing", func(t *testing.T) {
		if err := v.Uninstall(ctx, c); err != nil {
			t.Fatal(err)
		}
		if pids := labHAProxies(t, c); len(pids) > 0 {
			t.Errorf("HAProxy still runs in the lab: pids %v", pids)
		}
		for _, p := range c.Pods() {
			if p.Labels[WaypointForLabel] != "" {
				t.Errorf("waypoint pod %s is left", p.Name)
			}
		}
		for _, dir := range []string{"ambient-waypoint", "pki", "waypoint"} {
			if _, err := os.Stat(filepath.Join(c.RuntimeDir(), dir)); !os.IsNotExist(err) {
				t.Errorf("%s is left (%v)", filepath.Join(c.RuntimeDir(), dir), err)
			}
		}
	})
}
