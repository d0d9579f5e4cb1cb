// Package slot lets a job give its worker's run slot up while it waits on
// something other than the CPU: the worker bounds the jobs that compute at
// once by its run slots, not the jobs that wait on Graph (graphclient parks
// around every request: its pacing, the network, a throttled retry).
package slot

import "context"

// Parker is told when a job starts waiting (Park) and when it goes on
// (Unpark, which may block until a run slot is free). Calls nest: a job
// with requests in flight from several goroutines parks once.
type Parker interface {
	Park()
	Unpark()
}

type key struct{}

// With returns ctx carrying p.
func With(ctx context.Context, p Parker) context.Context { return context.WithValue(ctx, key{}, p) }

// Park parks ctx's job, if it has a Parker, and returns what unparks it.
func Park(ctx context.Context) (unpark func()) {
	p, ok := ctx.Value(key{}).(Parker)
	if !ok {
		return func() {}
	}
	p.Park()
	return p.Unpark
}
