package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// AgentCapabilities are the capabilities the agent's container gets instead of --privileged,
// which fails on these machines (their bounding set lacks CAP_SYS_RESOURCE, which a privileged
// container asks for). Each was found needed by running the lab's traffic, restarts and
// uninstall without it (see the package test): CAP_BPF and CAP_PERFMON to load the programs
// (BTF reads of tcp_sock for telemetry need PERFMON), CAP_NET_ADMIN for the cgroup sock_addr,
// sockops and sk_msg programs, their SOCKHASH and cgroup attach/query, CAP_SYS_ADMIN to enter
// pods' network namespaces (setns) for their netns cookie and to find attached programs by id.
var AgentCapabilities = []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"}

// containerdDefaultCaps is what containerd 1.6 gives a container by default (oci/spec.go); the
// ones the agent does not need are dropped, since ctr has no --cap-drop ALL.
var containerdDefaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}

// ContainerdTools are the commands a lab containerd needs, and their Debian packages.
var ContainerdTools = map[string]string{"containerd": "containerd", "ctr": "containerd",
	"containerd-shim-runc-v2": "containerd", "runc": "runc"}

// Containerd is a containerd of the lab's own: its root, state, sockets, runc state and FIFOs
// all live in Dir, its namespace is its own, and Close removes every container, mount and cgroup
// it made. (Its shims put their sockets in /run/containerd/s, a path containerd 1.6 hard-codes;
// Close removes that directory again if it made it.) No CRI, no CNI: containers join the
// network namespace they are given.
type Containerd struct {
	Dir       string
	Address   string
	Namespace string
	// Image is what RunArgv runs; Caps the capabilities it gives (default AgentCapabilities).
	Image string
	Caps  []string

	cmd      *exec.Cmd
	exited   chan struct{}
	madeRun  bool                 // /run/containerd did not exist before
	v2       string               // containerd's own cgroup v2 directory: containers' cgroups are relative to it
	v1       []string             // containerd's own cgroup v1 directories, one per hierarchy
	mu       sync.Mutex           // guards cgroups
	cgroups  map[string]cgroupRel // container id -> its cgroupsPath
	stopOnce sync.Once
}

// StartContainerd starts a containerd in a new directory under the system's temporary one (unix
// socket paths are short) and waits until it answers.
func StartContainerd(ctx context.Context) (*Containerd, error) {
	if err := RequireTools(ContainerdTools); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "onehop-ctrd-")
	if err != nil {
		return nil, err
	}
	c := &Containerd{Dir: dir, Address: filepath.Join(dir, "containerd.sock"), Namespace: "onehop",
		exited: make(chan struct{}), cgroups: map[string]cgroupRel{}}
	if _, err := os.Stat("/run/containerd"); os.IsNotExist(err) {
		c.madeRun = true
	}
	// No CRI (the kubelet's API, which wants CNI), no debug or metrics listener, and every path
	// containerd would otherwise take under /var/lib, /run or /opt moved into dir.
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Address, c.Address+".ttrpc", filepath.Join(dir, "opt"))
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		c.Close()
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		c.Close()
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command("containerd", "--config", cfg)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		c.Close()
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go func() { c.cmd.Wait(); close(c.exited) }()
	if err := c.ownCgroups(); err != nil {
		c.Close()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.Ctr(ctx, "version")
		if err == nil {
			return c, nil
		}
		select {
		case <-c.exited:
			err = fmt.Errorf("containerd exited: %s", c.LogTail(2000))
		case <-time.After(100 * time.Millisecond):
			if time.Now().Before(deadline) && ctx.Err() == nil {
				continue
			}
		}
		c.Close()
		return nil, fmt.Errorf("containerd did not answer within 30s: %v", err)
	}
}

// LogTail is the end of containerd's log, for error messages.
func (c *Containerd) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// CtrArgv is ctr with this containerd's address and namespace, then args.
func (c *Containerd) CtrArgv(args ...string) []string {
	return append([]string{"ctr", "--address", c.Address, "--namespace", c.Namespace}, args...)
}

// Ctr runs ctr and returns its output; an error carries it.
func (c *Containerd) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return Ctr(ctx, c.Address, c.Namespace, args...)
}

// Ctr runs ctr against the containerd at address, in namespace, and returns its output; an
// error carries it.
func Ctr(ctx context.Context, address, namespace string, args ...string) ([]byte, error) {
	argv := append([]string{"ctr", "--address", address, "--namespace", namespace}, args...)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Import loads a docker-archive (or OCI) tarball into the image store and unpacks it.
func (c *Containerd) Import(ctx context.Context, tarball string) error {
	_, err := c.Ctr(ctx, "images", "import", tarball)
	return err
}

// Container is one container RunArgv runs.
type Container struct {
	ID   string
	Args []string // the process (the image's entrypoint is not prepended)
	// Netns is the network namespace to join (a lab node's, as hostNetwork); "": a new one.
	Netns string
	// Cgroup is a cgroup v2 directory for the container, made by runc and removed with the
	// container (a lab node daemon's, so the lab's CPU accounting sees it). "": containerd's.
	Cgroup string
	// Binds are host paths mounted at the same path inside, recursively (submounts such as a
	// bpffs come along) and as slaves (network namespaces the lab adds later show up).
	Binds []string
}

// RunArgv is the ctr command that runs ct in the foreground: it forwards the signals it gets to
// the container's process, exits with it and then removes the container. It is what the lab
// starts where it would start the agent's process.
func (c *Containerd) RunArgv(ct Container) []string {
	argv := c.CtrArgv("run", "--rm", "--runc-root", filepath.Join(c.Dir, "runc"), "--fifo-dir", filepath.Join(c.Dir, "fifo"))
	if ct.Netns != "" {
		argv = append(argv, "--with-ns", "network:"+ct.Netns)
	}
	// Always explicit, so that Remove knows every cgroup runc makes (runc's default,
	// <namespace>/<id>, would otherwise leave its <namespace> parent behind).
	argv = append(argv, "--cgroup", c.cgroupPath(ct.ID, ct.Cgroup))
	caps := c.Caps
	if caps == nil {
		caps = AgentCapabilities
	}
	for _, d := range containerdDefaultCaps {
		if !slices.Contains(caps, d) {
			argv = append(argv, "--cap-drop", d)
		}
	}
	for _, a := range caps {
		argv = append(argv, "--cap-add", a)
	}
	tmpfs := false
	for _, b := range ct.Binds {
		if strings.HasPrefix(b, "/sys/fs/cgroup/") && !tmpfs {
			// The container's /sys is a read-only sysfs, where runc cannot make a mount point:
			// a tmpfs on /sys/fs/cgroup takes it, and shows nothing of the host's cgroups but
			// the bound directories.
			argv = append(argv, "--mount", "type=tmpfs,src=tmpfs,dst=/sys/fs/cgroup,options=nosuid:nodev:noexec:mode=755")
			tmpfs = true
		}
		argv = append(argv, "--mount", "type=bind,src="+b+",dst="+b+",options=rbind:rslave:rw")
	}
	return append(append(argv, c.Image, ct.ID), ct.Args...)
}

// cgroupPath is the cgroupsPath given to runc for a cgroup v2 directory: relative to
// containerd's own cgroups, so that in the cgroup v1 hierarchies the container stays inside
// containerd's (and whatever limits its caller) while in v2 it lands in dir. A dir outside
// containerd's v2 cgroup cannot be reached that way: the container then gets one of its own
// beside containerd's.
func (c *Containerd) cgroupPath(id, dir string) string {
	r := cgroupRel{}
	if dir != "" {
		r.path, _ = filepath.Rel(c.v2, dir)
	}
	if r.path == "" || r.path == "." || strings.HasPrefix(r.path, "..") {
		r = cgroupRel{path: filepath.Join(c.Namespace, id), own: true}
	}
	c.mu.Lock()
	c.cgroups[id] = r
	c.mu.Unlock()
	return r.path
}

// cgroupRel is a container's cgroupsPath, relative to containerd's cgroups; own: one of the
// Containerd's own (no lab directory asked for), in cgroup v2 as well as v1.
type cgroupRel struct {
	path string
	own  bool
}

// ownCgroups finds containerd's cgroup in every hierarchy.
func (c *Containerd) ownCgroups() error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid))
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, m := range mounts {
			if parts[1] == "" && m.fstype == "cgroup2" {
				c.v2 = filepath.Join(m.point, parts[2])
			} else if parts[1] != "" && m.fstype == "cgroup" && containsAll(m.options, strings.Split(parts[1], ",")) {
				c.v1 = append(c.v1, filepath.Join(m.point, parts[2]))
			}
		}
	}
	if c.v2 == "" {
		return fmt.Errorf("containerd: no cgroup v2 hierarchy mounted (see /proc/self/mountinfo)")
	}
	return sc.Err()
}

// removeCgroups removes what runc left of a container's cgroups: its own directories and the
// parents made on the way, all below containerd's own cgroups, in the v1 hierarchies, and in v2
// too for a cgroup of the Containerd's own (a lab's v2 directory goes with the lab). Only empty
// directories go (rmdir).
func (c *Containerd) removeCgroups(id string) {
	c.mu.Lock()
	r, ok := c.cgroups[id]
	c.mu.Unlock()
	if !ok {
		return
	}
	roots := c.v1
	if r.own {
		roots = append(slices.Clone(roots), c.v2)
	}
	for _, root := range roots {
		for p := r.path; p != "." && p != "/"; p = filepath.Dir(p) {
			unix.Rmdir(filepath.Join(root, p))
		}
	}
}

// Kill sends sig to a container's process.
func (c *Containerd) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	_, err := c.Ctr(ctx, "tasks", "kill", "--signal", unix.SignalName(sig), id)
	return err
}

// Remove kills and deletes a container, if there is one, and its cgroups.
func (c *Containerd) Remove(ctx context.Context, id string) error {
	var last error
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := c.Ctr(ctx, "tasks", "delete", "--force", id)
		if err == nil || strings.Contains(err.Error(), "not found") {
			break
		}
		if last = err; time.Now().After(deadline) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c.Ctr(ctx, "containers", "delete", id); err != nil && !strings.Contains(err.Error(), "not found") {
		return err
	}
	c.removeCgroups(id)
	return nil
}

// Containers lists the containers' ids.
func (c *Containerd) Containers(ctx context.Context) ([]string, error) {
	out, err := c.Ctr(ctx, "containers", "list", "--quiet")
	return strings.Fields(string(out)), err
}

// TaskPID is the host pid of a running container's process.
func (c *Containerd) TaskPID(ctx context.Context, id string) (int, error) {
	out, err := c.Ctr(ctx, "tasks", "list")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %q: %s", id, out)
}

// Close removes every container, stops containerd and its shims, and removes its mounts,
// cgroups and directory.
func (c *Containerd) Close() error {
	var errs []string
	c.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c.cmd != nil {
			ids, _ := c.Containers(ctx)
			for _, id := range ids {
				if err := c.Remove(ctx, id); err != nil {
					errs = append(errs, err.Error())
				}
			}
			c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				c.cmd.Process.Kill()
				<-c.exited
			}
		}
		// A shim outlives containerd by design; one left (its container was not removed) dies.
		for _, pid := range ShimsOf(c.Address) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		c.mu.Lock()
		ids := make([]string, 0, len(c.cgroups))
		for id := range c.cgroups {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		for _, id := range ids {
			c.removeCgroups(id)
		}
		UnmountUnder(c.Dir)
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err.Error())
		}
		if c.madeRun { // only if empty: another containerd may have come meanwhile
			os.Remove("/run/containerd/s")
			os.Remove("/run/containerd")
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("containerd %s: %s", c.Dir, strings.Join(errs, "; "))
	}
	return nil
}

// ShimsOf are the pids of the shims serving the containerd at address (their -address).
func ShimsOf(address string) []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		if i := slices.Index(args, "-address"); i >= 0 && i+1 < len(args) && args[i+1] == address {
			pid, _ := strconv.Atoi(filepath.Base(d))
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// UnmountUnder detaches every mount at or below dir (a containerd's root filesystems, shm,
// pods' network namespaces, a bpffs), last mounted first, so submounts go before their parents.
func UnmountUnder(dir string) error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		mp := mounts[i].point
		if mp != dir && !strings.HasPrefix(mp, dir+"/") {
			continue
		}
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

type mount struct {
	point, fstype string
	options       []string // super options (a cgroup v1 hierarchy's controllers are there)
}

// readMounts lists the mounts of this process's mount namespace, in mount order.
func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f1, f2 := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f1) < 5 || len(f2) < 3 {
			continue
		}
		point, _ := strconv.Unquote(`"` + strings.ReplaceAll(f1[4], `"`, `\"`) + `"`) // octal escapes
		if point == "" {
			point = f1[4]
		}
		out = append(out, mount{point: point, fstype: f2[0], options: strings.Split(f2[2], ",")})
	}
	return out, sc.Err()
}

func containsAll(set, want []string) bool {
	for _, w := range want {
		if !slices.Contains(set, w) {
			return false
		}
	}
	return true
}
