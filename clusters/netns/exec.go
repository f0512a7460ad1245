package netns

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/onehop-mesh/onehop/internal/netnsrun"
)

// run executes a command and returns its output; a failure carries the command and its stderr.
func run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ipBatch runs iproute2 commands, one per line, inside a network namespace ("" = current).
func ipBatch(ctx context.Context, netns string, lines ...string) error {
	argv := []string{"ip"}
	if netns != "" {
		argv = append(argv, "-n", netns)
	}
	argv = append(argv, "-batch", "-")
	_, err := run(ctx, []byte(strings.Join(lines, "\n")+"\n"), argv...)
	return err
}

// sysctl sets kernel parameters inside a network namespace.
func sysctl(ctx context.Context, netns string, kv ...string) error {
	_, err := run(ctx, nil, append(enter(netns), append([]string{"sysctl", "-q", "-w"}, kv...)...)...)
	return err
}

// enter prefixes a command so that it runs in a network namespace and nothing else changes.
// (`ip netns exec` also gives the process a mount namespace with /sys remounted, which hides the
// cgroup v2 and bpffs mounts that node daemons need.) /proc/sys/net follows the netns.
func enter(netns string) []string {
	return []string{"nsenter", "--net=" + netnsPath(netns), "--"}
}

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// inNetns runs fn on an OS thread switched into the named network namespace. Sockets created by
// fn stay in that namespace after the thread switches back.
func inNetns(name string, fn func() error) error { return netnsrun.Do(netnsPath(name), fn) }
