// Package kubetest runs a real Kubernetes API for tests, as controller-runtime's envtest does:
// etcd and kube-apiserver built from the Go module proxy (once, into a cache; see build.go),
// started on loopback ports with a temporary data directory, a CA and certificates generated
// here, RBAC on, and an admin client. There are no nodes, kubelets or controllers: objects are
// stored, validated, defaulted, watched and authorized by the real API server, but nothing runs
// them (a DaemonSet makes no pods, a namespace is never finalized).
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Env is a running API server.
type Env struct {
	// Config reaches the API server as a cluster admin (a client certificate in system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same admin credentials, for tools
	// (helm, kubectl, the agent's --kubeconfig).
	Kubeconfig string
	// Client is a clientset built from Config.
	Client kubernetes.Interface
}

// startTimeout bounds etcd's and the API server's start once the binaries exist; a cold
// kube-apiserver on 2 busy cores takes 10-20 s to be ready.
const startTimeout = 90 * time.Second

// Start builds etcd and kube-apiserver when the cache has none (a cold build takes about 10
// minutes on 2 cores; `make kube-bins` does it ahead), starts them, and waits until the API server
// is ready and its default namespaces exist. t.Cleanup stops both and removes their files.
// ONEHOP_KUBE_ASSETS (or KUBEBUILDER_ASSETS) names a directory holding etcd and kube-apiserver
// to use instead of building them.
func Start(t testing.TB) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bins, err := Binaries(ctx, t.Logf)
	if err != nil {
		t.Fatalf("kubetest: etcd and kube-apiserver binaries: %v", err)
	}
	dir := t.TempDir()
	// Stop the processes before the temporary directory goes (cleanups run last first).
	var procs []*proc
	t.Cleanup(func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	})

	pki, err := newPKI(dir)
	if err != nil {
		t.Fatalf("kubetest: certificates: %v", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	etcdClient, etcdPeer := freePort(t), freePort(t)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcd, err := startProc(bins.Etcd, filepath.Join(dir, "etcd.log"),
		"--name=kubetest",
		"--data-dir="+filepath.Join(dir, "etcd-data"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		// A test's data need not survive a crash: fsync costs seconds on a shared disk.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		t.Fatalf("kubetest: start etcd: %v", err)
	}
	procs = append(procs, etcd)
	if err := waitHTTP(ctx, etcd, &http.Client{Timeout: 5 * time.Second}, etcdURL+"/health"); err != nil {
		t.Fatalf("kubetest: etcd at %s not healthy: %v\n%s", etcdURL, err, etcd.tail())
	}

	port := freePort(t)
	apiserver, err := startProc(bins.APIServer, filepath.Join(dir, "kube-apiserver.log"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The kubernetes Service's endpoint may not be loopback; nothing here needs it (envtest's choice too).
		"--endpoint-reconciler-type=none",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file="+pki.servingCert, "--tls-private-key-file="+pki.servingKey,
		"--client-ca-file="+pki.caCert,
		"--service-account-key-file="+pki.saPub,
		"--service-account-signing-key-file="+pki.saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// Pods need no ServiceAccount object: nothing here runs the token controller.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		// Priority and fairness only costs CPU with one client.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	)
	if err != nil {
		t.Fatalf("kubetest: start kube-apiserver: %v", err)
	}
	procs = append(procs, apiserver)

	cfg := &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(port),
		TLSClientConfig: rest.TLSClientConfig{
			CAData: pki.caPEM, CertData: pki.adminCertPEM, KeyData: pki.adminKeyPEM,
		},
		QPS: 100, Burst: 200,
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		t.Fatalf("kubetest: client TLS config: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Second}
	if err := waitHTTP(ctx, apiserver, hc, cfg.Host+"/readyz"); err != nil {
		t.Fatalf("kubetest: kube-apiserver at %s not ready: %v\n%s", cfg.Host, err, apiserver.tail())
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: clientset: %v", err)
	}
	// /readyz can answer before the system namespaces controller made default and kube-system;
	// tests create objects there.
	for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem} {
		if err := waitNamespace(ctx, client, ns); err != nil {
			t.Fatalf("kubetest: namespace %s never appeared: %v\n%s", ns, err, apiserver.tail())
		}
	}

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := WriteKubeconfig(kubeconfig, "kubetest", cfg); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return &Env{Config: cfg, Kubeconfig: kubeconfig, Client: client}
}

// WriteKubeconfig writes cfg's server and client certificate as a kubeconfig whose cluster and
// current context are called name.
func WriteKubeconfig(path, name string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: "admin"}
	kc.CurrentContext = name
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

func waitNamespace(ctx context.Context, c kubernetes.Interface, name string) error {
	for {
		_, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitHTTP polls url until it answers 200, the process exits, or ctx ends.
func waitHTTP(ctx context.Context, p *proc, hc *http.Client, url string) error {
	last := errors.New("no answer yet")
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %v", filepath.Base(p.cmd.Path), p.err)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := hc.Do(req); err != nil {
			last = err
		} else {
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(lastLines(body.String(), 10)))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last: %v", ctx.Err(), last)
		case <-p.exited:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("kubetest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a child process whose output goes to a log file in the test's directory.
type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func startProc(bin, logPath string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Killed with the test process: a test binary stopped by -timeout must not leave an API
	// server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	return fmt.Sprintf("--- last lines of %s:\n%s", p.log, lastLines(string(b), 30))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
