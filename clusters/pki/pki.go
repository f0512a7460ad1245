// Package pki is the lab's certificate authority: it issues workload certificates with
// SPIFFE identities (spiffe://<trust domain>/ns/<namespace>/sa/<service account>) in the URI
// SAN, as Istio's CA does, for the mesh variants' mutual TLS. Keys never leave the lab's state
// directory and are written 0600.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// TrustDomain is the lab's SPIFFE trust domain, Istio's default.
const TrustDomain = "cluster.local"

// CA signs workload certificates.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, what peers verify against.
	PEM []byte
}

// LoadOrCreate returns the CA kept in dir (ca.pem, ca-key.pem), creating it first if needed.
func LoadOrCreate(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certPEM, err1 := os.ReadFile(certPath)
	keyPEM, err2 := os.ReadFile(keyPath)
	if err1 == nil && err2 == nil {
		return parseCA(certPEM, keyPEM)
	}
	if !errors.Is(err1, os.ErrNotExist) && err1 != nil {
		return nil, err1
	}
	ca, keyPEM, err := newCA()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := writeFiles(map[string][]byte{certPath: ca.PEM, keyPath: keyPEM}); err != nil {
		return nil, err
	}
	return ca, nil
}

func newCA() (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"onehop lab"}, CommonName: "onehop lab CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: TrustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := parseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
	return ca, keyPEM, err
}

func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("lab CA: ca.pem or ca-key.pem is not PEM (remove the lab with `onehop cluster down`)")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("lab CA certificate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("lab CA key: %w", err)
	}
	return &CA{Cert: cert, key: key, PEM: certPEM}, nil
}

// Identity returns the SPIFFE ID of a workload.
func Identity(namespace, serviceAccount string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: "/ns/" + namespace + "/sa/" + serviceAccount}
}

// Workload is where a workload's credentials were written.
type Workload struct {
	ID       string // SPIFFE ID
	Cert     string // certificate chain (leaf, then CA)
	Key      string
	Combined string // certificate chain and key in one file, as HAProxy's `crt` wants it
	CA       string // the CA certificate, to verify peers
}

// Issue writes a certificate for the identity into dir (created 0700; files 0600), valid for
// both client and server use, with the given DNS names as extra SANs. owner, when not 0, is the
// uid (and gid) that gets the directory and files: the proxy that uses them runs as its own user.
func (ca *CA) Issue(dir string, id *url.URL, dnsNames []string, owner int) (Workload, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Workload{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"onehop lab"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id},
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return Workload{}, fmt.Errorf("issue %s: %w", id, err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.PEM...)
	keyPEM, err := encodeKey(key)
	if err != nil {
		return Workload{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Workload{}, err
	}
	w := Workload{ID: id.String(), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"),
		Combined: filepath.Join(dir, "cert-and-key.pem"), CA: filepath.Join(dir, "ca.pem")}
	files := map[string][]byte{w.Cert: chain, w.Key: keyPEM, w.Combined: append(append([]byte{}, chain...), keyPEM...), w.CA: ca.PEM}
	if err := writeFiles(files); err != nil {
		return w, err
	}
	if owner != 0 {
		for _, p := range []string{dir, w.Cert, w.Key, w.Combined, w.CA} {
			if err := os.Lchown(p, owner, owner); err != nil {
				return w, err
			}
		}
	}
	return w, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	b, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), nil
}

// writeFiles writes each file 0600, through a temporary name so a reader never sees half a file.
func writeFiles(files map[string][]byte) error {
	for path, b := range files {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
