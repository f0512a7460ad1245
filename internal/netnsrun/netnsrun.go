// Package netnsrun runs code inside another network namespace without moving the process: a
// goroutine locks its OS thread, switches that thread's namespace, runs the function and switches
// back. Sockets created meanwhile stay in the namespace they were made in.
package netnsrun

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a thread inside the network namespace at path (/run/netns/NAME, /proc/PID/ns/net).
func Do(path string, fn func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w (needs CAP_SYS_ADMIN)", path, err)
			return
		}
		ferr := fn()
		// If the thread cannot go back it stays locked, and Go discards it when the goroutine ends.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
