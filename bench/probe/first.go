package probe

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"
)

// FirstSuccess makes one request after another to target (a new connection each, `Connection:
// close`, every pause) until one gets HTTP 200, and returns when that happened and how many
// attempts it took. A new pod's traffic may be refused, reset or black-holed while its data
// plane is being set up: each attempt has its own short deadline.
func FirstSuccess(ctx context.Context, target, path string, pause, timeout time.Duration) (time.Time, int, error) {
	deadline := time.Now().Add(timeout)
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, target))
	var last error
	for n := 1; ; n++ {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, n - 1, fmt.Errorf("no successful request to %s within %v (last error: %v)", target, timeout, last)
		}
		nc, err := (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext(ctx, "tcp", target)
		if err == nil {
			c := &client{Conn: nc, br: bufio.NewReader(nc), unhook: func() bool { return true }}
			err = c.do(req, time.Now().Add(200*time.Millisecond))
			c.close()
			if err == nil {
				return time.Now(), n, nil
			}
		}
		last = err
		time.Sleep(pause)
	}
}
