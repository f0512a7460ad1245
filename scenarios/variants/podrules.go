package variants

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/onehop-mesh/onehop/clusters"
)

// podRun runs a command in a pod, waits for it and returns its output (stdout and stderr).
func podRun(ctx context.Context, c clusters.Cluster, pod, name string, argv ...string) ([]byte, error) {
	var out bytes.Buffer
	p, err := c.Start(ctx, pod, clusters.Command{Name: name, Argv: append([]string{"sh", "-c", `exec "$@" 2>&1`, "sh"}, argv...), Stdout: &out})
	if err != nil {
		return nil, err
	}
	if err := p.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// podRestore feeds iptables-restore input to iptables-restore --noflush in a pod: one
// transaction, so the pod never has half the rules.
func podRestore(ctx context.Context, c clusters.Cluster, pod, rules string) error {
	_, err := podRun(ctx, c, pod, "iptables-restore", "sh", "-c", `printf '%s' "$1" | iptables-restore -w --noflush`, "sh", rules)
	return err
}

// podUnhook deletes from a pod's nat table exactly the given jumps (as iptables-save prints
// them, "-A ...") and chains, those that are there; it touches nothing else.
func podUnhook(ctx context.Context, c clusters.Cluster, pod string, chains, jumps []string) error {
	saved, err := podRun(ctx, c, pod, "iptables-save", "iptables-save", "-t", "nat")
	if err != nil {
		return fmt.Errorf("read its nat table: %w", err)
	}
	ours := map[string]bool{}
	for _, ch := range chains {
		ours[ch] = true
	}
	var del, flush, drop []string
	for _, line := range strings.Split(string(saved), "\n") {
		for _, j := range jumps {
			if line == j {
				del = append(del, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
		if name, ok := strings.CutPrefix(line, ":"); ok {
			if name = strings.Fields(name)[0]; ours[name] {
				flush = append(flush, ":"+name+" - [0:0]")
				drop = append(drop, "-X "+name)
			}
		}
	}
	if len(del)+len(drop) == 0 {
		return nil
	}
	return podRestore(ctx, c, pod, "*nat\n"+strings.Join(append(append(flush, del...), drop...), "\n")+"\nCOMMIT\n")
}
