package handlers

import (
	"fmt"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// ClientConfig is the Graph client configuration of an instance; open
// opens its sealed secret (a worker's pool key).
func ClientConfig(in *worker.Instance, open func(*jobs.SealedSecret) ([]byte, error), users int) (graphclient.Config, error) {
	cfg := graphclient.Config{Instance: in.ID, TenantID: in.TenantID, ClientID: in.ClientID, Cloud: in.Cloud, Authority: in.Authority,
		GraphRoot: in.GraphRoot, CAPEM: []byte(in.CAPEM), HTTPProxy: in.HTTPProxy, Users: users}
	switch {
	case in.ClientSecret != nil:
		b, err := open(in.ClientSecret)
		if err != nil {
			return cfg, worker.Permanent(CodeSecretUnreadable, fmt.Sprintf("cannot open the client secret of %s: %v", in.ID, err))
		}
		cfg.ClientSecret = string(b)
	case in.CertificateKey != nil:
		b, err := open(in.CertificateKey)
		if err != nil {
			return cfg, worker.Permanent(CodeSecretUnreadable, fmt.Sprintf("cannot open the certificate key of %s: %v", in.ID, err))
		}
		cfg.CertificatePEM, cfg.PrivateKeyPEM = []byte(in.Certificate), b
	}
	return cfg, nil
}

// graphClient builds the job's instance's Graph client.
func graphClient(pool *graphclient.Pool, j *worker.Job, users int) (*graphclient.Client, error) {
	if j.InstanceConfig == nil {
		return nil, worker.Permanent(jobs.CodeInstanceNotFound, fmt.Sprintf("no configuration for instance %q in the instances bucket", j.Job.Instance))
	}
	cfg, err := ClientConfig(j.InstanceConfig, j.OpenSecret, users)
	if err != nil {
		return nil, err
	}
	return pool.Client(cfg)
}
