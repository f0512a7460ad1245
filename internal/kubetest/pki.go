package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is what the API server and its admin client need: one CA signs the serving certificate and
// the admin's client certificate (the API server trusts it with --client-ca-file); a separate key
// signs service account tokens. ECDSA P-256 throughout: fast to generate, accepted everywhere.
type pki struct {
	caPEM, adminCertPEM, adminKeyPEM []byte
	// Files for kube-apiserver's flags.
	caCert, servingCert, servingKey, saKey, saPub string
}

// PKI is where WritePKI put a cluster's certificates and keys.
type PKI struct {
	CA, AdminCert, AdminKey, ServingCert, ServingKey, SAKey, SAPub string
	CAPEM, AdminCertPEM, AdminKeyPEM                               []byte
}

// WritePKI writes a cluster's certificates into dir/pki, valid for validity, the API server's
// serving certificate also for ips (the addresses clients and pods reach it at).
func WritePKI(dir string, validity time.Duration, ips ...net.IP) (PKI, error) {
	p, err := newPKIFor(dir, validity, ips)
	if err != nil {
		return PKI{}, err
	}
	out := PKI{CA: p.caCert, ServingCert: p.servingCert, ServingKey: p.servingKey, SAKey: p.saKey, SAPub: p.saPub,
		AdminCert: filepath.Join(dir, "pki", "admin.crt"), AdminKey: filepath.Join(dir, "pki", "admin.key"),
		CAPEM: p.caPEM, AdminCertPEM: p.adminCertPEM, AdminKeyPEM: p.adminKeyPEM}
	if err := os.WriteFile(out.AdminCert, p.adminCertPEM, 0o600); err != nil {
		return out, err
	}
	return out, os.WriteFile(out.AdminKey, p.adminKeyPEM, 0o600)
}

func newPKI(dir string) (*pki, error) { return newPKIFor(dir, 24*time.Hour, nil) }

func newPKIFor(dir string, validity time.Duration, extraIPs []net.IP) (*pki, error) {
	dir = filepath.Join(dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "onehop-kubetest-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)

	issue := func(serial int64, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(validity)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
	}
	servingCert, servingKey, err := issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}, extraIPs...),
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, err
	}
	// system:masters is bound to cluster-admin by the API server's bootstrap policy (and
	// bypasses authorization altogether).
	adminCert, adminKey, err := issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kubetest-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	p := &pki{
		caPEM:        pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		adminCertPEM: adminCert, adminKeyPEM: adminKey,
		caCert:      filepath.Join(dir, "ca.crt"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servingKey: filepath.Join(dir, "apiserver.key"),
		saKey: filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"),
	}
	for path, data := range map[string][]byte{
		p.caCert:      p.caPEM,
		p.servingCert: servingCert,
		p.servingKey:  servingKey,
		p.saKey:       pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
		p.saPub:       pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}
