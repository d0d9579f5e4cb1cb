package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/internal/bench"
)

// The receiver benchmark at a small scale: every attack runs against its
// own receiver, Graph's notifications are all answered (the attacks are
// too small to fill a cap), and only the valid instances' triggers reach
// JetStream, one each.
func TestReceiverBenchRunsSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := bench.RunReceiver(ctx, bench.ReceiverOptions{Binary: binary, Phase: 3 * time.Second, SlowConns: 20, Streams: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Phases) != 6 {
		t.Fatalf("%d phases", len(r.Phases))
	}
	for _, p := range r.Phases {
		if p.PeakRSS < 1<<20 || p.Valid == 0 || p.ValidOK+p.Valid503+p.ValidFailed != p.Valid || p.HostileStored != 0 || p.Stored != p.Instances {
			t.Errorf("phase %q: %+v", p.Name, p)
		}
		if p.Name != "idle" && len(p.Hostile) == 0 {
			t.Errorf("phase %q: no hostile request answered", p.Name)
		}
	}
}
