package datapath

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// runClient is the child side of the tests (see TestMain): it runs the clientJob in spec with
// plain socket syscalls, so each connection is exactly one connect() and one getpeername(), and
// writes one JSON clientResult per connection to stdout.
func runClient(spec string) int {
	var job clientJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Fprintf(os.Stderr, "bad client job %q: %v\n", spec, err)
		return 2
	}
	target, err := netip.ParseAddrPort(job.Target)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bad client target: %v\n", err)
		return 2
	}
	out := json.NewEncoder(os.Stdout)
	stdin := bufio.NewScanner(os.Stdin)
	if job.Bench {
		return bench(target, job.Request, stdin, out)
	}
	if job.Echo {
		return echo(target, stdin, out, job.Graceful)
	}
	if job.Serve {
		return serve(target, out)
	}
	var stop atomic.Bool
	if job.Until {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop.Store(true)
		}()
	}
	deadline := time.Now().Add(job.Duration)
	for i := 0; (job.Count == 0 || i < job.Count) && (job.Duration == 0 || time.Now().Before(deadline)) && !stop.Load(); i++ {
		fd, r := dial(target)
		if fd >= 0 {
			r.Backend, err = readAll(fd)
			if err != nil {
				r.Err = "read: " + err.Error()
			}
		}
		if err := out.Encode(r); err != nil {
			return 1
		}
		if fd >= 0 && job.Hold {
			stdin.Scan()
		}
		closeReset(fd)
		time.Sleep(job.Pause)
	}
	return 0
}

// echo makes one connection, then for each line on stdin sends it and reports the echo (as
// Backend) and what getpeername says now; the line "shutdown" half-closes the connection. At
// the end of stdin it resets the connection, or with graceful half-closes it, waits for the
// peer's close and closes.
func echo(target netip.AddrPort, stdin *bufio.Scanner, out *json.Encoder, graceful bool) int {
	fd, r := dial(target)
	if err := out.Encode(r); err != nil || fd < 0 {
		return 1
	}
	defer func() {
		if !graceful {
			closeReset(fd)
			return
		}
		var r clientResult
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			r.Err = "shutdown: " + err.Error()
		} else if rest, err := readAll(fd); err != nil || rest != "" {
			r.Err = fmt.Sprintf("waiting for the peer's close: read %q, %v", rest, err)
		}
		unix.Close(fd)
		out.Encode(r)
	}()
	stdin.Buffer(make([]byte, 1<<20), 1<<20)
	for stdin.Scan() {
		var r clientResult
		line := stdin.Text()
		if line == "shutdown" {
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				r.Err = "shutdown: " + err.Error()
			}
		} else {
			buf := make([]byte, len(line))
			err := exchange(fd, []byte(line), buf)
			if err != nil {
				r.Err = err.Error()
			}
			r.Backend = string(buf)
		}
		if peer, err := unix.Getpeername(fd); err == nil {
			r.Peer = sockaddrString(peer)
		}
		if err := out.Encode(r); err != nil {
			return 1
		}
	}
	return 0
}

// serve listens on target and echoes every connection until the peer half-closes, then closes
// it. Its first line of output gives the address it listens on (as Local).
func serve(target netip.AddrPort, out *json.Encoder) int {
	ln, err := net.Listen("tcp", target.String())
	if err != nil {
		out.Encode(clientResult{Err: err.Error()})
		return 1
	}
	out.Encode(clientResult{Local: ln.Addr().String()})
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

// exchange writes req and reads len(resp) bytes back into resp (the echo of req).
func exchange(fd int, req, resp []byte) error {
	if _, err := unix.Write(fd, req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for n := 0; n < len(resp); {
		m, err := unix.Read(fd, resp[n:])
		switch {
		case err == unix.EINTR:
		case err != nil:
			return fmt.Errorf("read: %w", err)
		case m == 0:
			return errors.New("read: EOF")
		}
		n += max(m, 0)
	}
	return nil
}

// bench answers each line "N" on stdin with the time N connect()+close() took; with request
// above 0, each connection also sends that many bytes and reads their echo before its close.
func bench(target netip.AddrPort, request int, stdin *bufio.Scanner, out *json.Encoder) int {
	req, resp := []byte(strings.Repeat("x", request)), make([]byte, request)
	for stdin.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(stdin.Text()))
		if err != nil {
			return 2
		}
		var r clientResult
		start := monotonic()
		for range n {
			fd, dr := dial(target)
			if fd < 0 {
				r.Err = dr.Err
				break
			}
			if request > 0 {
				if err := exchange(fd, req, resp); err != nil {
					r.Err = err.Error()
					closeReset(fd)
					break
				}
			}
			closeReset(fd)
		}
		r.Elapsed = monotonic() - start
		if err := out.Encode(r); err != nil {
			return 1
		}
	}
	return 0
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// dial connects a TCP socket of target's family (AF_INET6 for v4-mapped targets) and reports
// what getpeername and getsockname say. fd is -1 if it failed.
func dial(target netip.AddrPort) (int, clientResult) {
	var r clientResult
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(target.Port()), Addr: target.Addr().As16()})
	if target.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
	}
	// Non-blocking connect and poll: the Go runtime's preemption signals would interrupt a
	// blocking connect (EINTR) halfway.
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		r.Err = "socket: " + err.Error()
		return -1, r
	}
	r.Start = monotonic()
	err = unix.Connect(fd, sa)
	if err == unix.EINPROGRESS {
		err = awaitConnect(fd)
	}
	r.End = monotonic()
	if err != nil {
		unix.Close(fd)
		r.Err = "connect: " + err.Error()
		return -1, r
	}
	// Blocking reads, bounded: nothing here may hang the test.
	unix.SetNonblock(fd, false)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	if peer, err := unix.Getpeername(fd); err == nil {
		r.Peer = sockaddrString(peer)
	}
	if local, err := unix.Getsockname(fd); err == nil {
		r.Local = sockaddrString(local)
	}
	return fd, r
}

func awaitConnect(fd int) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(time.Until(deadline).Milliseconds()))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return unix.ETIMEDOUT
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

func readAll(fd int) (string, error) {
	var (
		buf []byte
		b   [64]byte
	)
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return string(buf), err
		}
		if n == 0 {
			return string(buf), nil
		}
		buf = append(buf, b[:n]...)
		if len(buf) > 1024 {
			return string(buf), io.ErrShortBuffer
		}
	}
}

// closeReset closes with a reset, so thousands of connections leave no TIME_WAIT behind.
func closeReset(fd int) {
	if fd < 0 {
		return
	}
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}
