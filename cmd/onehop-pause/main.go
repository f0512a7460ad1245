// Command onehop-pause is a pod sandbox's process, as Kubernetes' pause: it holds the pod's
// namespaces open, reaps orphans when it is the pod's PID 1, and exits on SIGINT or SIGTERM.
// It is built here, static, into the pause image that a cluster assembled without a registry
// uses as its sandbox image (see deploy/image).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for { // reap every exited child (a shared PID namespace's orphans)
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
