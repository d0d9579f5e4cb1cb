package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/tevyra/m365-worker/graphclient"
	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/worker"
)

// ClientConfig is the Graph client configuration of an instance; open
// opens its sealed secret for its binding (a worker's pool key).
func ClientConfig(in *worker.Instance, open func(*jobs.SealedSecret, jobs.Binding) ([]byte, error), users int) (graphclient.Config, error) {
	cfg := graphclient.Config{Instance: in.ID, TenantID: in.TenantID, ClientID: in.ClientID, Cloud: in.Cloud, Authority: in.Authority,
		GraphRoot: in.GraphRoot, CAPEM: []byte(in.CAPEM), HTTPProxy: in.HTTPProxy, Users: users}
	if in.ProxyCredentials != nil {
		b, err := openField(in, worker.FieldProxy, in.ProxyCredentials, open)
		if err != nil {
			return cfg, err
		}
		if cfg.HTTPProxy, err = withUserinfo(in.HTTPProxy, string(b)); err != nil {
			return cfg, worker.Permanent(jobs.CodeInvalidParams, err.Error())
		}
	}
	switch {
	case in.ClientSecret != nil:
		b, err := openField(in, worker.FieldClientSecret, in.ClientSecret, open)
		if err != nil {
			return cfg, err
		}
		cfg.ClientSecret = string(b)
	case in.CertificateKey != nil:
		b, err := openField(in, worker.FieldCertificateKey, in.CertificateKey, open)
		if err != nil {
			return cfg, err
		}
		cfg.CertificatePEM, cfg.PrivateKeyPEM = []byte(in.Certificate), b
	case in.FederatedCredential:
		cfg.Federated = true
	}
	return cfg, nil
}

func openField(in *worker.Instance, field string, s *jobs.SealedSecret, open func(*jobs.SealedSecret, jobs.Binding) ([]byte, error)) ([]byte, error) {
	b, err := open(s, in.SecretBinding(field))
	if err == nil {
		return b, nil
	}
	msg := fmt.Sprintf("cannot open the %s of %s: %v", field, in.ID, err)
	if errors.Is(err, jobs.ErrUnbound) || errors.Is(err, jobs.ErrSealedElsewhere) {
		msg += fmt.Sprintf("; seal it for this instance: m365-worker instance update %s --pool-key-file <the pool's key> (re-seals it), or give the secret again with --secret-file", in.ID)
	}
	return nil, worker.Permanent(CodeSecretUnreadable, msg)
}

// CodeEndpointOverrideRefused: the instance record sets authority,
// graph_root or ca_pem and the pool does not run with
// --allow-endpoint-overrides.
const CodeEndpointOverrideRefused = "endpoint_override_refused"

// graphClient builds the job's instance's Graph client.
func graphClient(pool *graphclient.Pool, j *worker.Job, users int) (*graphclient.Client, error) {
	if j.InstanceConfig == nil {
		return nil, worker.Permanent(jobs.CodeInstanceNotFound, fmt.Sprintf("no configuration for instance %q in the instances bucket", j.Job.Instance))
	}
	cfg, err := ClientConfig(j.InstanceConfig, j.OpenInstanceSecret, users)
	if err != nil {
		return nil, err
	}
	c, err := pool.Client(cfg)
	var oe *graphclient.EndpointOverrideError
	if errors.As(err, &oe) {
		return nil, worker.Permanent(CodeEndpointOverrideRefused, fmt.Sprintf("instance %s sets %s, which would send its credentials and tokens to servers of the record's choosing instead of its cloud's: "+
			"refused; remove it from the instance record (national clouds need only cloud: usgov, usgov-dod or china), or run the pool's workers with --allow-endpoint-overrides (M365_ALLOW_ENDPOINT_OVERRIDES=true) where a simulator or test tenant needs it",
			oe.Instance, strings.Join(oe.Fields, ", ")))
	}
	return c, err
}

// rotated turns a refused credential into a retry when the instance's
// record changed while the job ran: its credentials were rotated (instance
// update, then the old secret removed from the app), and the retry runs
// with the new ones. Otherwise err stands.
func rotated(ctx context.Context, j *worker.Job, err error) error {
	var je *jobs.Error
	if !errors.As(err, &je) || je.Code != CodeAuthFailed || !j.InstanceChanged(ctx) {
		return err
	}
	return worker.RetryAfter(time.Second, fmt.Errorf("the instance's credentials changed while the job ran; again with the new ones: %w", err))
}

// withUserinfo puts "user:password" back into a proxy URL.
func withUserinfo(proxy, userinfo string) (string, error) {
	u, err := url.Parse(proxy)
	if err != nil {
		return "", fmt.Errorf("http_proxy is not a URL")
	}
	user, pass, _ := strings.Cut(userinfo, ":")
	u.User = url.UserPassword(user, pass)
	return u.String(), nil
}
