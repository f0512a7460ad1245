// Package enrollment identifies pods to the kernel by the cookie of their network namespace.
// The connect-time programs look the socket's netns cookie up in the enrollment map, so
// enrolling or unenrolling a pod is one map update: no program is re-attached.
package enrollment

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Cookie returns the netns cookie of the network namespace at path (for example
// /run/netns/onehop-lab-pod-x or /proc/PID/ns/net): a socket is opened inside that namespace
// and asked with SO_NETNS_COOKIE (Linux 5.14+).
func Cookie(path string) (uint64, error) {
	target, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	type result struct {
		cookie uint64
		err    error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace %s: %w (needs CAP_SYS_ADMIN)", path, err)}
			return
		}
		fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		// Back to our namespace before anything else; a thread that cannot go back stays locked
		// and Go discards it when this goroutine ends.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		if serr != nil {
			done <- result{err: fmt.Errorf("socket in %s: %w", path, serr)}
			return
		}
		defer unix.Close(fd)
		c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			err = fmt.Errorf("SO_NETNS_COOKIE of %s: %w (needs Linux 5.14+)", path, err)
		}
		done <- result{cookie: c, err: err}
	}()
	r := <-done
	return r.cookie, r.err
}
