// Package enrollment identifies pods to the kernel by the cookie of their network namespace.
// The connect-time programs look the socket's netns cookie up in the enrollment map, so
// enrolling or unenrolling a pod is one map update: no program is re-attached.
package enrollment

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/internal/netnsrun"
)

// Cookie returns the netns cookie of the network namespace at path (for example
// /run/netns/onehop-lab-pod-x or /proc/PID/ns/net): a socket is opened inside that namespace
// and asked with SO_NETNS_COOKIE (Linux 5.14+).
func Cookie(path string) (uint64, error) {
	var fd int
	err := netnsrun.Do(path, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("socket in %s: %w", path, err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE of %s: %w (needs Linux 5.14+)", path, err)
	}
	return c, nil
}
