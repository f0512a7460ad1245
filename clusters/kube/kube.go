// Package kube is the lab on a real Kubernetes cluster: a scenario's namespaces, pods and
// services become real Namespaces, Deployments of one pod each (the workload image: the lab's fortio server and load
// driver) and Services; its processes run with `kubectl exec`; the service store the reports
// read is fed by the cluster's own API. Any kubeconfig works (kind, a cloud cluster); on this
// machine it runs on clusters/localkube.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/deploy/install"
)

// ProviderName is how results and reports name this provider.
const ProviderName = "kube"

// LabLabel marks every namespace a lab creates, with the lab's name.
const LabLabel = "onehop.io/lab"

// PodLabel selects the pod of a lab pod's Deployment: its value is the lab pod's name.
const PodLabel = "onehop.io/lab-pod"

// Binary is the lab's binary in the workload image.
const Binary = "/onehop"

// Provider makes labs on the cluster of a kubeconfig.
type Provider struct {
	Kubeconfig string
	Kubectl    string // kubectl, for exec
	// WorkloadImage runs every pod; Install says how variants install onehop (its images,
	// helm, chart and node paths).
	WorkloadImage string
	Install       install.Options
	ServiceCIDR   netip.Prefix // the cluster's (default 10.96.0.0/12)
	// Name is the provider's name in results: "kube", or "localkube" when it runs on one.
	Name string
	Log  *slog.Logger
}

// Cluster is a lab on a Kubernetes cluster.
type Cluster struct {
	p     *Provider
	name  string
	spec  clusters.Spec
	rc    *rest.Config
	cs    *kubernetes.Clientset
	store *services.Store
	stop  context.CancelFunc
	nodes map[string]string // lab node (n1...) -> the cluster's node
	dir   string            // logs of exec'd processes

	mu    sync.Mutex
	pods  map[string]clusters.Pod
	kpods map[string]string // lab pod -> the Deployment's current pod
}

func (p *Provider) client() (*rest.Config, *kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", p.Kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("kube: kubeconfig %s: %w", p.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	return rc, cs, err
}

// Up creates the spec's namespaces, services and pods, and waits until every pod is ready and
// the store holds every service. A lab of that name left by a killed run is removed first.
func (p *Provider) Up(ctx context.Context, spec clusters.Spec) (clusters.Cluster, error) {
	spec.SetDefaults()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if len(spec.IPFamilies) != 1 || spec.IPFamilies[0] != "ipv4" {
		return nil, fmt.Errorf("kube: the lab on Kubernetes is IPv4 only for now (spec asks for %v)", spec.IPFamilies)
	}
	if err := p.Down(ctx, spec.Name); err != nil {
		return nil, err
	}
	rc, cs, err := p.client()
	if err != nil {
		return nil, err
	}
	nodeList, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: list nodes: %w", err)
	}
	var names []string
	for _, n := range nodeList.Items {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	if len(names) < spec.Nodes {
		return nil, fmt.Errorf("kube: the scenario needs %d nodes; the cluster has %d (%v)", spec.Nodes, len(names), names)
	}
	dir, err := os.MkdirTemp("", "onehop-kube-"+spec.Name+"-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{p: p, name: spec.Name, spec: spec, rc: rc, cs: cs, nodes: map[string]string{}, dir: dir,
		pods: map[string]clusters.Pod{}, kpods: map[string]string{}}
	for i, n := range spec.NodeNames() {
		c.nodes[n] = names[i]
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
			p.Down(context.WithoutCancel(ctx), spec.Name)
		}
	}()
	if err := c.watch(ctx); err != nil {
		return nil, err
	}
	for _, ns := range spec.Namespaces {
		labels := map[string]string{LabLabel: spec.Name}
		for k, v := range ns.Labels {
			labels[k] = v
		}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("kube: namespace %s: %w", ns.Name, err)
		}
	}
	for _, sd := range spec.Services {
		if _, err := c.UpsertService(ctx, sd); err != nil {
			return nil, err
		}
	}
	for _, ps := range spec.Pods {
		if err := c.createPod(ctx, ps); err != nil {
			return nil, err
		}
	}
	for _, ps := range spec.Pods {
		if _, err := c.waitPod(ctx, ps); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

// watch fills the store from the cluster's Services and Pods.
func (c *Cluster) watch(ctx context.Context) error {
	cidr := c.p.ServiceCIDR
	if !cidr.IsValid() {
		cidr = netip.MustParsePrefix("10.96.0.0/12")
	}
	c.store = services.New(cidr)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.stop = cancel
	synced, errc := make(chan struct{}), make(chan error, 1)
	log := c.p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	go func() { errc <- (&Source{Client: c.cs, Store: c.store, Log: log}).Run(wctx, synced) }()
	select {
	case <-synced:
		return nil
	case err := <-errc:
		return err
	case <-time.After(time.Minute):
		return errors.New("kube: services and pods not listed within a minute")
	}
}

// Open is not supported: a lab on Kubernetes lives as long as the run that made it.
func (p *Provider) Open(ctx context.Context, name string) (clusters.Cluster, error) {
	return nil, fmt.Errorf("kube: reopening lab %q is not supported; run the scenario again (it re-creates the lab)", name)
}

// Down deletes every namespace of the lab, and waits until they are gone.
func (p *Provider) Down(ctx context.Context, name string) error {
	_, cs, err := p.client()
	if err != nil {
		return err
	}
	sel := metav1.ListOptions{LabelSelector: LabLabel + "=" + name}
	list, err := cs.CoreV1().Namespaces().List(ctx, sel)
	if err != nil {
		return fmt.Errorf("kube: list the lab's namespaces: %w", err)
	}
	for _, ns := range list.Items {
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return install.Poll(ctx, 3*time.Minute, func() (bool, string) {
		l, err := cs.CoreV1().Namespaces().List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		return len(l.Items) == 0, fmt.Sprintf("%d namespaces of lab %s still terminating", len(l.Items), name)
	})
}

func (c *Cluster) Name() string              { return c.name }
func (c *Cluster) Provider() string          { return cmpOr(c.p.Name, ProviderName) }
func (c *Cluster) Spec() clusters.Spec       { return c.spec }
func (c *Cluster) Services() *services.Store { return c.store }
func (c *Cluster) CPUTargets() []cpu.Target  { return nil } // the nodes' cgroups are not ours to read

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// NodeName is the cluster's name of the lab's node (n1, n2, ...), "" if it has none.
func (c *Cluster) NodeName(labNode string) string { return c.nodes[labNode] }

// Kubeconfig is the cluster's, for variants that install with helm or kubectl.
func (c *Cluster) Kubeconfig() string { return c.p.Kubeconfig }

// Clientset is the lab's API client.
func (c *Cluster) Clientset() kubernetes.Interface { return c.cs }

// InstallOptions say how onehop is installed on this cluster (deploy/install).
func (c *Cluster) InstallOptions() install.Options {
	o := c.p.Install
	o.Kubeconfig = c.p.Kubeconfig
	return o
}

func (c *Cluster) Close() error {
	if c.stop != nil {
		c.stop()
	}
	return os.RemoveAll(c.dir)
}

func (c *Cluster) Pods() []clusters.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]clusters.Pod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b clusters.Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (c *Cluster) Pod(name string) (clusters.Pod, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pods[name]
	return p, ok
}

// createPod makes the lab pod as a Deployment of one replica, pinned to its node: the
// workload image, its fortio server when it has a workload, else an idle process (a client,
// whose load is exec'd into it). The Deployment's name is the lab pod's, so metrics name the
// workload as the scenario does.
func (c *Cluster) createPod(ctx context.Context, ps clusters.PodSpec) error {
	node, ok := c.nodes[ps.Node]
	if !ok {
		return fmt.Errorf("kube: pod %s: no node %q", ps.Name, ps.Node)
	}
	ct := corev1.Container{Name: "main", Image: c.p.WorkloadImage, ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{"workload", "idle"}}
	if w := ps.Workload; w != nil {
		ct.Args = []string{"workload", w.Kind, "--port", strconv.Itoa(w.Port)}
		ct.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(w.Port)}},
			PeriodSeconds: 1}
	}
	labels := map[string]string{PodLabel: ps.Name}
	for k, v := range ps.Labels {
		labels[k] = v
	}
	no, one := false, int32(1)
	_, err := c.cs.AppsV1().Deployments(ps.Namespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: ps.Name, Labels: map[string]string{PodLabel: ps.Name}},
		Spec: appsv1.DeploymentSpec{Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{PodLabel: ps.Name}},
			// One pod at a time: a lab pod is one address.
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: &no, TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{ct}}}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("kube: deployment %s/%s: %w", ps.Namespace, ps.Name, err)
	}
	return nil
}

// waitPod waits until the Deployment's pod is ready and records it.
func (c *Cluster) waitPod(ctx context.Context, ps clusters.PodSpec) (clusters.Pod, error) {
	var pod clusters.Pod
	var kname string
	err := install.Poll(ctx, 3*time.Minute, func() (bool, string) {
		l, err := c.cs.CoreV1().Pods(ps.Namespace).List(ctx, metav1.ListOptions{LabelSelector: PodLabel + "=" + ps.Name})
		if err != nil {
			return false, err.Error()
		}
		state := "no pod yet"
		for _, p := range l.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			state = string(p.Status.Phase)
			ready := false
			for _, cond := range p.Status.Conditions {
				ready = ready || (cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue)
			}
			if !ready {
				continue
			}
			pod, kname = clusters.Pod{PodSpec: ps}, p.Name
			for _, ip := range p.Status.PodIPs {
				if a, err := netip.ParseAddr(ip.IP); err == nil {
					pod.IPs = append(pod.IPs, a)
				}
			}
			return true, ""
		}
		return false, fmt.Sprintf("deployment %s/%s: %s", ps.Namespace, ps.Name, state)
	})
	if err != nil {
		return pod, fmt.Errorf("kube: %w", err)
	}
	c.mu.Lock()
	c.pods[ps.Name], c.kpods[ps.Name] = pod, kname
	c.mu.Unlock()
	return pod, nil
}

// kpod is the Kubernetes name of a lab pod's current pod.
func (c *Cluster) kpod(name string) (clusters.Pod, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pods[name]
	if !ok {
		return p, "", fmt.Errorf("kube: no pod %q in lab %s", name, c.name)
	}
	return p, c.kpods[name], nil
}

func (c *Cluster) CreatePod(ctx context.Context, ps clusters.PodSpec) (clusters.Pod, error) {
	if ps.Namespace == "" {
		ps.Namespace = "default"
	}
	if err := c.createPod(ctx, ps); err != nil {
		return clusters.Pod{}, err
	}
	return c.waitPod(ctx, ps)
}

// DeletePod deletes the lab pod's Deployment, and its pod with it.
func (c *Cluster) DeletePod(ctx context.Context, name string) error {
	p, _, err := c.kpod(name)
	if err != nil {
		return err
	}
	bg := metav1.DeletePropagationBackground
	if err := c.cs.AppsV1().Deployments(p.Namespace).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	c.mu.Lock()
	delete(c.pods, name)
	delete(c.kpods, name)
	c.mu.Unlock()
	return nil
}

// UpsertService creates or updates the Service and waits until the store has it.
func (c *Cluster) UpsertService(ctx context.Context, sd clusters.ServiceDef) (services.Service, error) {
	if sd.Namespace == "" {
		sd.Namespace = "default"
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: sd.Name, Namespace: sd.Namespace}, Spec: corev1.ServiceSpec{Selector: sd.Selector}}
	for _, p := range sd.Ports {
		proto := corev1.ProtocolTCP
		if p.Protocol == "UDP" {
			proto = corev1.ProtocolUDP
		}
		target := p.TargetPort
		if target == 0 {
			target = p.Port
		}
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: intstr.FromInt(target), Protocol: proto})
	}
	old, err := c.cs.CoreV1().Services(sd.Namespace).Get(ctx, sd.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.cs.CoreV1().Services(sd.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	case err == nil:
		old.Spec.Selector, old.Spec.Ports = svc.Spec.Selector, svc.Spec.Ports
		_, err = c.cs.CoreV1().Services(sd.Namespace).Update(ctx, old, metav1.UpdateOptions{})
	}
	if err != nil {
		return services.Service{}, fmt.Errorf("kube: service %s/%s: %w", sd.Namespace, sd.Name, err)
	}
	var out services.Service
	err = install.Poll(ctx, 30*time.Second, func() (bool, string) {
		v, ok := c.store.Snapshot().Service(sd.Namespace, sd.Name)
		out = v.Service
		return ok && len(v.Ports) == len(sd.Ports), "service " + sd.Namespace + "/" + sd.Name + " not yet seen"
	})
	return out, err
}

func (c *Cluster) DeleteService(ctx context.Context, namespace, name string) error {
	err := c.cs.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// Start runs a process in the pod with kubectl exec; the lab's binary is the image's /onehop.
// A detached process's Stop ends the local kubectl, which ends the remote process's streams.
func (c *Cluster) Start(ctx context.Context, podName string, cmd clusters.Command) (*clusters.Process, error) {
	pod, kname, err := c.kpod(podName)
	if err != nil {
		return nil, err
	}
	if cmd.UID != 0 || cmd.Container != "" {
		return nil, fmt.Errorf("kube: %s: processes as another user or in a container of their own are for the netns lab", cmd.Name)
	}
	argv := slices.Clone(cmd.Argv)
	lab := len(argv) > 1 && filepath.Base(argv[0]) == "onehop" && argv[1] == "workload"
	if lab {
		// SIGTERM to kubectl does not reach the remote process: closing its standard input does.
		argv = append([]string{Binary, "workload", "--" + loadgen.StdinEOFStops}, argv[2:]...)
	}
	logPath := filepath.Join(c.dir, podName+"-"+cmd.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	x := exec.CommandContext(ctx, c.p.Kubectl, append([]string{"--kubeconfig", c.p.Kubeconfig, "exec", "-i", "-n", pod.Namespace, kname, "--"}, argv...)...)
	x.Stdout, x.Stderr = logf, logf
	if cmd.Stdout != nil {
		x.Stdout = cmd.Stdout
	}
	p := &clusters.Process{Cmd: x, LogPath: logPath}
	if cmd.Detach {
		x = exec.Command(x.Path, x.Args[1:]...) // outlives ctx, as the netns lab's detached processes
		x.Stdout, x.Stderr = p.Stdout, p.Stderr
		p.Cmd = x
	}
	var stdin io.WriteCloser
	if lab {
		if stdin, err = x.StdinPipe(); err != nil {
			return nil, err
		}
		p.Terminate = stdin.Close
	}
	if err := x.Start(); err != nil {
		return nil, fmt.Errorf("kube: kubectl exec in %s: %w", podName, err)
	}
	if cmd.Detach {
		p.Exited = make(chan struct{})
		go func() { x.Wait(); close(p.Exited) }()
	}
	return p, nil
}

// Dial opens a connection to a port on the pod's own loopback through the API server's port
// forwarding (what kubectl port-forward does): the lab reads the servers' request counts there.
func (c *Cluster) Dial(ctx context.Context, podName, network, address string) (net.Conn, error) {
	pod, kname, err := c.kpod(podName)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil || network != "tcp" || !(host == "127.0.0.1" || host == "localhost" || host == "::1") {
		return nil, fmt.Errorf("kube: dial %s %s from pod %s: only TCP to the pod's own loopback is forwarded", network, address, podName)
	}
	tr, upgrader, err := spdy.RoundTripperFor(c.rc)
	if err != nil {
		return nil, err
	}
	url := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(kname).SubResource("portforward").URL()
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(spdy.NewDialer(upgrader, &http.Client{Transport: tr}, http.MethodPost, url),
		[]string{"127.0.0.1"}, []string{"0:" + port}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return nil, fmt.Errorf("kube: port-forward to %s:%s: %w", podName, port, err)
	case <-ctx.Done():
		close(stop)
		return nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return nil, fmt.Errorf("kube: port-forward to %s:%s: %v", podName, port, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))))
	if err != nil {
		close(stop)
		return nil, err
	}
	return &forwarded{Conn: conn, stop: stop}, nil
}

// forwarded is a connection through a port forward of its own, which Close ends.
type forwarded struct {
	net.Conn
	stop chan struct{}
	once sync.Once
}

func (f *forwarded) Close() error {
	err := f.Conn.Close()
	f.once.Do(func() { close(f.stop) })
	return err
}
