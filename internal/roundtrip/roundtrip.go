// Package roundtrip counts the JetStream round trips (a request and its
// reply: a KV read or write, a stored publish, an acknowledged ack) made on
// behalf of a job, by the stage of its path that made them. The worker puts
// a stage's counter in the context; the code that talks to JetStream (the
// state bucket, the publisher, the worker's own reads and acks) adds to
// whatever counter its context carries. A context without one counts
// nothing.
package roundtrip

import (
	"context"
	"sync/atomic"
)

type key struct{}

// With returns a context whose round trips add to c.
func With(ctx context.Context, c *atomic.Int64) context.Context {
	return context.WithValue(ctx, key{}, c)
}

// Add counts n round trips against the context's counter, if it has one.
func Add(ctx context.Context, n int) {
	if c, ok := ctx.Value(key{}).(*atomic.Int64); ok {
		c.Add(int64(n))
	}
}
