// Package pki makes the TLS material of a deployment's NATS connections: a
// CA, a server certificate (serverAuth and clientAuth: routes use it both
// ways) and client certificates, as PEM files. It is for development,
// compose and tests (m365-worker tls init); production deployments use
// their own CA.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files names the PEM files Init wrote.
type Files struct {
	Dir        string
	CA         string
	ServerCert string
	ServerKey  string
	// Clients maps a client name to its certificate and key files.
	Clients map[string][2]string
}

// Init writes into dir a CA (ca.pem), a server certificate for hosts
// (server.pem, server-key.pem) and a client certificate per name
// (<name>.pem, <name>-key.pem), valid for validFor. Keys are written 0600.
func Init(dir string, hosts, clients []string, validFor time.Duration) (Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, err
	}
	caTmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "m365-worker NATS CA"}, NotBefore: now.Add(-time.Minute),
		NotAfter: now.Add(validFor), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return Files{}, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	f := Files{Dir: dir, Clients: map[string][2]string{}}
	if f.CA, err = writePEM(dir, "ca.pem", "CERTIFICATE", caDER, 0o644); err != nil {
		return f, err
	}
	issue := func(name string, usage []x509.ExtKeyUsage, hosts []string) (string, string, error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name}, NotBefore: now.Add(-time.Minute),
			NotAfter: now.Add(validFor), ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		kb, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return "", "", err
		}
		cert, err := writePEM(dir, name+".pem", "CERTIFICATE", der, 0o644)
		if err != nil {
			return "", "", err
		}
		key, err := writePEM(dir, name+"-key.pem", "EC PRIVATE KEY", kb, 0o600)
		return cert, key, err
	}
	if f.ServerCert, f.ServerKey, err = issue("server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, hosts); err != nil {
		return f, err
	}
	for _, c := range clients {
		if c == "server" || c == "ca" || c == "" || filepath.Base(c) != c {
			return f, fmt.Errorf("client name %q: use a plain name other than server and ca", c)
		}
		cert, key, err := issue(c, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
		if err != nil {
			return f, err
		}
		f.Clients[c] = [2]string{cert, key}
	}
	return f, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writePEM(dir, name, typ string, der []byte, mode os.FileMode) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
