package variants

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/clusters/pki"
)

// sidecarLab brings up a lab with a namespace "mesh" labelled for v (a client on n1; server
// mesh-web-1 on n1 behind service "same", mesh-web-2 on n2 behind "cross", both port 80 ->
// 8080) and a namespace "plain" with a client on n1, then installs v. It returns Install's
// error; the variant is uninstalled (checked) and the lab removed when the test ends.
func sidecarLab(t *testing.T, v NetnsVariant) (*netns.Cluster, error) {
	t.Helper()
	if _, err := HAProxyVersion(); err != nil {
		t.Skip(err)
	}
	_, p, name := testProvider(t, "ts")
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "mesh", Labels: v.Labels()}, {Name: "plain"}}}
	server := func(pod, node, app string) clusters.PodSpec {
		return clusters.PodSpec{Name: pod, Namespace: "mesh", Node: node, Labels: map[string]string{"app": app}, Component: "server",
			Workload: &clusters.Workload{Kind: "fortio-server", Port: 8080}}
	}
	spec.Pods = []clusters.PodSpec{
		{Name: "mesh-client", Namespace: "mesh", Node: "n1", Component: "client"},
		server("mesh-web-1", "n1", "web-same"), server("mesh-web-2", "n2", "web-cross"),
		{Name: "plain-client", Namespace: "plain", Node: "n1", Component: "client"},
	}
	for _, svc := range []string{"same", "cross"} {
		spec.Services = append(spec.Services, clusters.ServiceDef{Name: svc, Namespace: "mesh", Selector: map[string]string{"app": "web-" + svc},
			Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	}
	return upAndInstall(t, p, spec, v)
}

func mustSidecarLab(t *testing.T, v *Sidecar) *netns.Cluster {
	t.Helper()
	c, err := sidecarLab(t, v)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// proxyOf returns the HAProxy of a pod's sidecar.
func proxyOf(t *testing.T, v *Sidecar, pod string) *HAProxy {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	sc, ok := v.sidecars[pod]
	if !ok {
		t.Fatalf("pod %s has no sidecar", pod)
	}
	return sc.proxy
}

// requests reads a frontend's or backend's request counter from a proxy's admin socket.
func requests(t *testing.T, h *HAProxy, proxy string) int {
	t.Helper()
	n, err := h.Requests(proxy)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSidecarCarriesHTTPThroughBothProxies: requests from the injected client to a VIP succeed
// same-node and cross-node, and both proxies count them: the client's outbound listener (in the
// service's backend) and the server's inbound listener.
func TestSidecarCarriesHTTPThroughBothProxies(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	client := proxyOf(t, v, "mesh-client")
	for _, tc := range []struct{ svc, server string }{{"same", "mesh-web-1"}, {"cross", "mesh-web-2"}} {
		vip := serviceIP(t, c, "mesh", tc.svc)
		server := proxyOf(t, v, tc.server)
		backend := "out:" + vip + ":80"
		out0, be0, in0 := requests(t, client, "outbound"), requests(t, client, backend), requests(t, server, "inbound")
		for i := 0; i < 5; i++ {
			status, peer := get(t, c, "mesh-client", "http://"+vip+"/echo")
			if status != "200" {
				t.Fatalf("%s: request %d to %s: status %q", tc.svc, i, vip, status)
			}
			if peer != vip+":80" { // interception is invisible to the application
				t.Errorf("%s: the client saw peer %s, want %s:80", tc.svc, peer, vip)
			}
		}
		out1, be1, in1 := requests(t, client, "outbound"), requests(t, client, backend), requests(t, server, "inbound")
		if out1-out0 < 5 || be1-be0 < 5 {
			t.Errorf("%s: the client's sidecar counted %d outbound requests (%d in %s), want >= 5", tc.svc, out1-out0, be1-be0, backend)
		}
		if in1-in0 < 5 {
			t.Errorf("%s: the server's sidecar counted %d inbound requests, want >= 5", tc.svc, in1-in0)
		}
	}
	// No request reached the lab's kube-proxy rules: the sidecar sends to the endpoint itself.
	if n := natPackets(t, c, serviceIP(t, c, "mesh", "same")); n != 0 {
		t.Errorf("%d packets to the VIP went through the node's service NAT", n)
	}
}

// TestSidecarAppTalksToItsLocalProxy: a connection the application opens to a VIP ends at its
// own sidecar (the socket listing of the pod shows HAProxy holding the other end on port
// 15001), and only the proxy is connected to the server.
func TestSidecarAppTalksToItsLocalProxy(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	ctx := context.Background()
	conn, err := c.Dial(ctx, "mesh-client", "tcp", serviceIP(t, c, "mesh", "cross")+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: cross\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	out, err := podRun(ctx, c, "mesh-client", "ss", "ss", "-Htnp")
	if err != nil {
		t.Fatal(err)
	}
	app, server := conn.LocalAddr().String(), podIP(t, c, "mesh-web-2")+":8080"
	var proxyHasApp, proxyHasServer bool
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "ESTAB" {
			continue
		}
		local, peer, owner := f[3], f[4], strings.Join(f[5:], " ")
		haproxy := strings.Contains(owner, `"haproxy"`)
		if haproxy && strings.HasSuffix(local, ":"+strconv.Itoa(OutboundPort)) && peer == app {
			proxyHasApp = true
		}
		if peer == server {
			if !haproxy {
				t.Errorf("a socket other than the proxy's is connected to the server: %s", line)
			}
			proxyHasServer = true
		}
	}
	if !proxyHasApp || !proxyHasServer {
		t.Errorf("want HAProxy on :%d connected to the app's %s and HAProxy connected to the server %s; ss -tnp:\n%s", OutboundPort, app, server, out)
	}
}

// TestSidecarMutualTLS: the server's sidecar only takes mutual TLS from a workload of the lab CA.
// A pod outside the mesh connecting in plaintext to the server pod's port is redirected into the
// TLS listener and gets no HTTP answer; with a lab certificate it does (and sees the server's
// SPIFFE identity); with a certificate of another CA it does not.
func TestSidecarMutualTLS(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	ctx := context.Background()
	target := podIP(t, c, "mesh-web-1") + ":8080"
	if status, _ := get(t, c, "plain-client", "http://"+target+"/echo"); status == "200" {
		t.Fatalf("a plaintext request from outside the mesh to %s got 200: mTLS is not enforced", target)
	}
	ca, err := pki.LoadOrCreate(filepath.Join(c.RuntimeDir(), "pki", "ca"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	request := func(certs []tls.Certificate) (string, error) {
		conn, err := c.Dial(ctx, "plain-client", "tcp", target)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(conn, &tls.Config{RootCAs: roots, Certificates: certs, ServerName: "mesh-web-1"})
		if err := tc.Handshake(); err != nil {
			return "", err
		}
		io.WriteString(tc, "GET /echo HTTP/1.1\r\nHost: web\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		return fmt.Sprintf("%d %s", resp.StatusCode, tc.ConnectionState().PeerCertificates[0].URIs[0]), nil
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
	if got, err := request(issue(ca)); err != nil || got != "200 spiffe://cluster.local/ns/mesh/sa/mesh-web-1" {
		t.Errorf("with a lab certificate: %q, %v; want 200 from spiffe://cluster.local/ns/mesh/sa/mesh-web-1", got, err)
	}
	if got, err := request(nil); err == nil {
		t.Errorf("without a client certificate: %q, want a refused handshake", got)
	}
	other, err := pki.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := request(issue(other)); err == nil {
		t.Errorf("with a certificate of another CA: %q, want a refused handshake", got)
	}
}

// TestSidecarPlaintext: with mTLS off, the same plaintext request from outside the mesh is
// answered, through the server's sidecar.
func TestSidecarPlaintext(t *testing.T) {
	v := &Sidecar{MTLS: false}
	c := mustSidecarLab(t, v)
	server := proxyOf(t, v, "mesh-web-1")
	in0 := requests(t, server, "inbound")
	if status, _ := get(t, c, "plain-client", "http://"+podIP(t, c, "mesh-web-1")+":8080/echo"); status != "200" {
		t.Fatalf("plaintext request from outside the mesh: status %q, want 200", status)
	}
	if status, _ := get(t, c, "mesh-client", "http://"+serviceIP(t, c, "mesh", "cross")+"/echo"); status != "200" {
		t.Fatalf("through the sidecars: status %q", status)
	}
	if in := requests(t, server, "inbound"); in-in0 != 1 {
		t.Errorf("the server's sidecar counted %d inbound requests, want 1", in-in0)
	}
	if _, err := os.Stat(filepath.Join(c.RuntimeDir(), "pki")); !os.IsNotExist(err) {
		t.Errorf("plaintext sidecars issued certificates (%v)", err)
	}
}

// TestSidecarUninstallLeavesNothing: no HAProxy, no interception chain, no file is left, and
// the pods reach the service through kube-proxy's rules again.
func TestSidecarUninstallLeavesNothing(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	ctx := context.Background()
	if err := v.Uninstall(ctx, c); err != nil {
		t.Fatal(err)
	}
	if pids := labHAProxies(t, c); len(pids) > 0 {
		t.Errorf("HAProxy still runs in the lab's pods: pids %v", pids)
	}
	for _, tg := range c.CPUTargets() {
		if tg.Component == "sidecar" {
			if b, _ := os.ReadFile(filepath.Join(tg.Path, "cgroup.procs")); len(b) > 0 {
				t.Errorf("processes left in %s: %s", tg.Path, b)
			}
		}
	}
	for _, p := range c.Pods() {
		out, err := podRun(ctx, c, p.Name, "iptables-save", "iptables-save", "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "ONEHOP-") {
			t.Errorf("pod %s keeps interception rules:\n%s", p.Name, out)
		}
	}
	for _, dir := range []string{"sidecar", "pki"} {
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
}

// TestSidecarRejectedConfigFailsInstall: a config HAProxy rejects fails Install with an error
// naming the pod and HAProxy's complaint, and the failed install leaves no proxy running.
func TestSidecarRejectedConfigFailsInstall(t *testing.T) {
	v := &Sidecar{MTLS: true, editConfig: func(pod string, cfg []byte) []byte {
		if pod == "mesh-web-2" {
			return append(cfg, "    no-such-directive on\n"...)
		}
		return cfg
	}}
	c, err := sidecarLab(t, v)
	if err == nil {
		t.Fatal("Install accepted a config HAProxy rejects")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "pod mesh-web-2") || !strings.Contains(err.Error(), "no-such-directive") {
		t.Errorf("error %q does not name the pod and the rejected directive", err)
	}
	if pids := labHAProxies(t, c); len(pids) > 0 {
		t.Errorf("the failed install left HAProxy running: pids %v", pids)
	}
}

// TestSidecarRestart: after a graceful restart and after a crash of the node's sidecars, they
// listen again and requests go through them.
func TestSidecarRestart(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	ctx := context.Background()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		old := proxyOf(t, v, "mesh-client").Process().Process.Pid
		ev, err := v.Restart(ctx, c, "n1", sig)
		if err != nil {
			t.Fatalf("restart with %v: %v", sig, err)
		}
		t.Logf("%s: %s, ready after %.1f ms", ev.Signal, ev.Daemon, ev.ReadyMS)
		if ev.ReadyMS <= 0 || !strings.Contains(ev.Daemon, "mesh-client") || !strings.Contains(ev.Daemon, "mesh-web-1") {
			t.Errorf("restart event %+v: want both n1 sidecars and a ready time", ev)
		}
		if pid := proxyOf(t, v, "mesh-client").Process().Process.Pid; pid == old {
			t.Errorf("%v: the client's sidecar is still pid %d", sig, pid)
		}
		for _, svc := range []string{"same", "cross"} {
			vip := serviceIP(t, c, "mesh", svc)
			out0 := requests(t, proxyOf(t, v, "mesh-client"), "outbound")
			if status, _ := get(t, c, "mesh-client", "http://"+vip+"/echo"); status != "200" {
				t.Fatalf("after %v, %s: status %q", sig, svc, status)
			}
			if requests(t, proxyOf(t, v, "mesh-client"), "outbound") != out0+1 {
				t.Errorf("after %v, %s: the request did not go through the restarted sidecar", sig, svc)
			}
		}
	}
	if pids := labHAProxies(t, c); len(pids) != 3*2 { // a master and a worker per sidecar
		t.Errorf("%d HAProxy processes in the lab after the restarts, want 6 (old ones left?): %v", len(pids), pids)
	}
}

// TestSidecarFollowsTheStore: a pod created in the injected namespace gets a sidecar (AddPod,
// or the store watcher), the client's sidecar (reloaded) sends it its share of the service's
// requests over mTLS, and RemovePod takes the sidecar out again.
func TestSidecarFollowsTheStore(t *testing.T) {
	v := &Sidecar{MTLS: true}
	c := mustSidecarLab(t, v)
	ctx := context.Background()
	pod, err := c.CreatePod(ctx, clusters.PodSpec{Name: "mesh-web-3", Namespace: "mesh", Node: "n2",
		Labels: map[string]string{"app": "web-cross"}, Workload: &clusters.Workload{Kind: "fortio-server", Port: 8080}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.AddPod(ctx, c, pod); err != nil { // the watcher may have been first: then a no-op
		t.Fatal(err)
	}
	client := proxyOf(t, v, "mesh-client")
	backend := "out:" + serviceIP(t, c, "mesh", "cross") + ":80"
	deadline := time.Now().Add(20 * time.Second)
	for {
		stats, err := client.ShowStat()
		found := false
		for _, s := range stats {
			found = found || s["pxname"] == backend && s["svname"] == "mesh-web-3"
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's sidecar did not get the new endpoint within 20s (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	web3 := proxyOf(t, v, "mesh-web-3")
	in0 := requests(t, web3, "inbound")
	for i := 0; i < 6; i++ {
		if status, _ := get(t, c, "mesh-client", "http://"+serviceIP(t, c, "mesh", "cross")+"/echo"); status != "200" {
			t.Fatalf("request %d after the change: status %q", i, status)
		}
	}
	if n := requests(t, web3, "inbound") - in0; n < 2 {
		t.Errorf("the new endpoint's sidecar served %d of 6 round-robin requests, want 3", n)
	}
	if err := v.RemovePod(ctx, c, pod); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.RuntimeDir(), "sidecar", "mesh-web-3")); !os.IsNotExist(err) {
		t.Errorf("RemovePod left the sidecar's files (%v)", err)
	}
	if web3.Running() {
		t.Error("RemovePod left the proxy running")
	}
}
