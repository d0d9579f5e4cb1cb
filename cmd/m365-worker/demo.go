package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tevyra/m365-worker/graphsim"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// loadOrCreatePoolKey reads the embedded default's pool key, creating it on
// first start (mode 0600 beside the data).
func loadOrCreatePoolKey(path string) (nkeys.KeyPair, error) {
	if b, err := os.ReadFile(path); err == nil {
		return nkeys.FromCurveSeed([]byte(strings.TrimSpace(string(b))))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read pool key: %w", err)
	}
	kp, err := nkeys.CreateCurveKeys()
	if err != nil {
		return nil, err
	}
	seed, _ := kp.Seed()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		return nil, fmt.Errorf("write pool key: %w", err)
	}
	return kp, nil
}

// startDemo starts the Graph simulator with a demo tenant, configures the
// instance "demo" for it, asks for a first sync, and prints indicators as
// they arrive. It returns the simulator (the console's demo sign-in) and
// what stops it.
func startDemo(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, topo worker.Topology, key nkeys.KeyPair, pool, listen string, users int, stdout io.Writer) (*graphsim.Server, func(), error) {
	sim, err := graphsim.Start(graphsim.Options{Users: users, Groups: max(users/10, 5), Listen: listen})
	if err != nil {
		return nil, nil, fmt.Errorf("start the demo's Graph simulator: %w", err)
	}
	cred := sim.Credentials()[0]
	pub, _ := key.PublicKey()
	secret, err := jobs.SealFor([]byte(cred.ClientSecret), pub, jobs.InstanceBinding("demo", worker.FieldClientSecret, cred.TenantID, cred.ClientID))
	if err != nil {
		sim.Close()
		return nil, nil, err
	}
	store, err := worker.OpenInstances(ctx, js, topo)
	if err != nil {
		sim.Close()
		return nil, nil, err
	}
	if _, err := store.Put(ctx, worker.Instance{ID: "demo", Pool: pool, TenantID: cred.TenantID, ClientID: cred.ClientID, ClientSecret: secret,
		Authority: cred.Authority, GraphRoot: cred.GraphRoot, CAPEM: string(sim.CAPEM())}); err != nil {
		sim.Close()
		return nil, nil, err
	}
	sub, err := nc.Subscribe(topo.Subjects.Results("demo", jobs.ResultIndicators), func(m *nats.Msg) {
		var ind jobs.Indicators
		if json.Unmarshal(m.Data, &ind) == nil {
			fmt.Fprintf(stdout, "demo indicators: %d users (%d enabled, %d licensed), %d groups, %d of %d licences used\n",
				ind.UsersTotal, ind.UsersEnabled, ind.UsersLicensed, ind.GroupsTotal, ind.LicensesConsumed, ind.LicensesTotal)
		}
	})
	if err != nil {
		sim.Close()
		return nil, nil, err
	}
	if _, err := worker.RequestSync(ctx, js, topo.Subjects, pool, "demo", false); err != nil {
		sim.Close()
		return nil, nil, err
	}
	fmt.Fprintf(stdout, "Graph simulator with the demo tenant %s (%d users) at %s; instance \"demo\" syncs it every 5m\n", cred.Domain, users, sim.URL())
	return sim, func() { _ = sub.Unsubscribe(); sim.Close() }, nil
}
