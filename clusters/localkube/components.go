package localkube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/onehop-mesh/onehop/deploy/image"
	"github.com/onehop-mesh/onehop/internal/kubetest"
)

// v1Controllers are the cgroup v1 hierarchies the kubelet (cgroupfs driver) manages pods in on
// these hosts; the cluster's cgroup root is made in each, and in cgroup v2, before it starts.
var v1Controllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "systemd"}

func (c *Cluster) cgroups() error {
	p := prefix(c.Name)
	for _, ctl := range v1Controllers {
		root := filepath.Join(cgroupFS, ctl)
		if _, err := os.Stat(root); err != nil {
			continue // not mounted here
		}
		dir := filepath.Join(root, p)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("localkube: cgroup %s: %w", dir, err)
		}
		if ctl == "cpuset" { // a new cpuset has no CPUs or memory nodes until given its parent's
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(root, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, f), b, 0)
				}
				if err != nil {
					return fmt.Errorf("localkube: %s/%s: %w", dir, f, err)
				}
			}
		}
	}
	if err := os.Mkdir(c.CgroupV2, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("localkube: cgroup %s: %w", c.CgroupV2, err)
	}
	return nil
}

// start runs argv in the node's network namespace, detached: the cluster outlives the command
// that brought it up. Its pid goes to pids/<name>, its output to logs/<name>.log.
func (c *Cluster) start(name string, argv ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.Netns, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("localkube: start %s: %w", name, err)
	}
	go cmd.Wait() // reaped if it exits while we run; Down finds it by pid otherwise
	return os.WriteFile(filepath.Join(c.Dir, "pids", name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
}

// LogTail is the end of a component's log, for error messages.
func (c *Cluster) LogTail(name string, n int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "logs", name+".log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (c *Cluster) startControlPlane(ctx context.Context, bins kubetest.Bins, pki kubetest.PKI) error {
	etcdURL := "http://127.0.0.1:2379"
	if err := c.start("etcd", bins.Etcd, "--name=localkube", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=localkube=http://127.0.0.1:2380", "--unsafe-no-fsync=true", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.start("kube-apiserver", bins.APIServer, "--etcd-servers="+etcdURL,
		"--bind-address=0.0.0.0", "--advertise-address="+c.NodeIP.String(), "--secure-port="+strconv.Itoa(apiPort),
		"--tls-cert-file="+pki.ServingCert, "--tls-private-key-file="+pki.ServingKey, "--client-ca-file="+pki.CA,
		"--service-account-key-file="+pki.SAPub, "--service-account-signing-key-file="+pki.SAKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+serviceCIDR, "--authorization-mode=Node,RBAC", "--allow-privileged=true",
		// logs, exec and port-forward reach the kubelet at the node's IP, with the admin's certificate.
		"--kubelet-preferred-address-types=InternalIP", "--kubelet-client-certificate="+pki.AdminCert,
		"--kubelet-client-key="+pki.AdminKey, "--enable-priority-and-fairness=false", "--profiling=false"); err != nil {
		return err
	}
	return c.waitAPI(ctx, pki, 90*time.Second)
}

// waitAPI waits for /readyz, from the host, through the veth: as every client will reach it.
func (c *Cluster) waitAPI(ctx context.Context, pki kubetest.PKI, timeout time.Duration) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.CAPEM)
	cert, err := tls.X509KeyPair(pki.AdminCertPEM, pki.AdminKeyPEM)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	url := fmt.Sprintf("https://%s:%d/readyz", c.NodeIP, apiPort)
	deadline := time.Now().Add(timeout)
	for {
		resp, err := hc.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("localkube: kube-apiserver not ready within %s: %v\n%s", timeout, err, c.LogTail("kube-apiserver", 3000))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (c *Cluster) startContainerd(ctx context.Context, source string) error {
	dir := filepath.Dir(c.containerd)
	cni := filepath.Join(c.Dir, "cni")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # these hosts deny lowering oom_score_adj
  restrict_oom_score_adj = true
  # pods' network namespaces under the state directory, not the host's /run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.containerd, c.containerd+".ttrpc", filepath.Join(dir, "opt"),
		pauseImage, cniBinDir, cni)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		return err
	}
	// One bridge on the node; host-local keeps its leases in the cluster's directory.
	conflist := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "localkube", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
`, filepath.Join(c.Dir, "cni-ipam"), podCIDR)
	if err := os.WriteFile(filepath.Join(cni, "10-localkube.conflist"), []byte(conflist), 0o600); err != nil {
		return err
	}
	if err := c.start("containerd", "containerd", "--config", filepath.Join(dir, "config.toml")); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.ctr(ctx, "version")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localkube: containerd does not answer: %v\n%s", err, c.LogTail("containerd", 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if source == "" {
		source = "."
	}
	res, err := image.Build(ctx, image.Options{Source: source, Package: "./cmd/onehop-pause", Entrypoint: "/pause",
		Tag: pauseImage, Out: filepath.Join(c.Dir, "pause.tar")})
	if err != nil {
		return fmt.Errorf("localkube: the pause image: %w", err)
	}
	return c.LoadImage(ctx, res.Path)
}

// ctr runs ctr against the node's containerd, in the CRI's namespace.
func (c *Cluster) ctr(ctx context.Context, args ...string) ([]byte, error) {
	return image.Ctr(ctx, c.containerd, "k8s.io", args...)
}

// LoadImage imports a docker-archive tarball into the node's containerd, as `kind load
// image-archive` does: pods use it with imagePullPolicy Never or IfNotPresent.
func (c *Cluster) LoadImage(ctx context.Context, tarball string) error {
	_, err := c.ctr(ctx, "images", "import", tarball)
	return err
}

func (c *Cluster) startNode(ctx context.Context, pki kubetest.PKI) error {
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These hosts have cgroup v1 controllers (an empty cgroup v2 beside them).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
port: 10250
healthzPort: 0
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[4]s}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: %[5]s
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, prefix(c.Name), c.containerd, c.NodeIP, pki.CA, filepath.Join(c.Dir, "pod-logs"))
	proxy := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %[1]s}
mode: iptables
clusterCIDR: %[2]s
hostnameOverride: %[3]s
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
`, c.Kubeconfig, podCIDR, c.NodeName)
	for name, body := range map[string]string{"kubelet.yaml": kubelet, "kube-proxy.yaml": proxy} {
		if err := os.WriteFile(filepath.Join(c.Dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	b := c.Bins
	kc := "--kubeconfig=" + c.Kubeconfig
	for _, p := range [][]string{
		{"kubelet", b.Kubelet, "--config=" + filepath.Join(c.Dir, "kubelet.yaml"), kc, "--root-dir=" + filepath.Join(c.Dir, "kubelet"),
			"--hostname-override=" + c.NodeName, "--node-ip=" + c.NodeIP.String()},
		{"kube-controller-manager", b.ControllerManager, kc, "--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig, "--service-account-private-key-file=" + pki.SAKey,
			"--root-ca-file=" + pki.CA, "--controllers=*,-nodeipam", "--leader-elect=false",
			"--bind-address=127.0.0.1", "--secure-port=10257"},
		{"kube-scheduler", b.Scheduler, kc, "--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259"},
		{"kube-proxy", b.Proxy, "--config=" + filepath.Join(c.Dir, "kube-proxy.yaml")},
	} {
		if err := c.start(p[0], p[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// Kubectl runs kubectl against the cluster and returns its output; an error carries it.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, c.Bins.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (c *Cluster) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := c.Kubectl(ctx, "get", "node", c.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err == nil && strings.TrimSpace(string(out)) == "True" {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("localkube: node %s not Ready within %s (%s %v)\n%s", c.NodeName, timeout, out, err, c.LogTail("kubelet", 3000))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// RunOnNode runs a command in the node's network namespace (as a hostNetwork pod would) and
// returns its output; an error carries it.
func (c *Cluster) RunOnNode(ctx context.Context, argv ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + c.Netns, "--"}, argv...)...).Output()
	if err != nil {
		return out, fmt.Errorf("%s on node %s: %w", strings.Join(argv, " "), c.NodeName, err)
	}
	return out, nil
}
