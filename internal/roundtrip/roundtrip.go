// Package roundtrip counts the JetStream round trips (a request and its
// reply: a KV read or write, a stored publish, a stream read) made on
// behalf of a job, by the stage of its path that made them. The worker puts
// a counter in the job's context once; the code that talks to JetStream (the
// state bucket, the publisher, the worker's own reads) adds to whatever
// counter its context carries. A context without one counts nothing.
package roundtrip

import "context"

// Counter receives a context's round trips.
type Counter interface{ Add(n int) }

type key struct{}

// With returns a context whose round trips go to c.
func With(ctx context.Context, c Counter) context.Context {
	return context.WithValue(ctx, key{}, c)
}

// Add counts n round trips against the context's counter, if it has one.
func Add(ctx context.Context, n int) {
	if c, ok := ctx.Value(key{}).(Counter); ok {
		c.Add(n)
	}
}
