package variants

import (
	"context"
	"log/slog"
)

// follower keeps a proxy deployment in step with the lab's service store: it calls sync after
// every change until stopped.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// follow starts a follower. Take changes from Services().Watch() before the first sync, so no
// change falls in between. A failed sync is logged, naming what did not follow.
func follow(changes <-chan struct{}, what string, sync func(ctx context.Context) error) *follower {
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
			}
			if err := sync(ctx); err != nil && ctx.Err() == nil {
				slog.Warn(what+" did not follow a service store change", "err", err)
			}
		}
	}()
	return f
}

// stop ends the follower and waits until its last sync is over; a nil follower is a no-op.
// Call it without holding a lock that sync takes.
func (f *follower) stop() {
	if f != nil {
		f.cancel()
		<-f.done
	}
}
