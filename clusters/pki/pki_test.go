package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestMutualTLSWithIssuedCertificates: two workloads with certificates from the lab CA complete
// a mutual TLS handshake and see each other's SPIFFE identity; a client without a certificate
// is refused; files are private; the CA is kept.
func TestMutualTLSWithIssuedCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreate(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreate(filepath.Join(dir, "ca"))
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("reloading the CA gave another one (%v)", err)
	}
	srv, err := ca.Issue(filepath.Join(dir, "server"), Identity("web", "default"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(filepath.Join(dir, "client"), Identity("app", "client"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{srv.Cert, srv.Key, srv.Combined, srv.CA, filepath.Join(dir, "ca", "ca-key.pem")} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, st.Mode().Perm(), err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	load := func(w Workload) tls.Certificate {
		c, err := tls.LoadX509KeyPair(w.Cert, w.Key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{load(srv)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan string, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				peers <- tc.ConnectionState().PeerCertificates[0].URIs[0].String()
				io.WriteString(tc, "ok")
			} else {
				peers <- ""
			}
			tc.Close()
		}
	}()
	// The client verifies the server's chain and SPIFFE ID, as mesh proxies do, not a host name.
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{Certificates: []tls.Certificate{load(cli)}, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				return err
			}
			if got := cs.PeerCertificates[0].URIs[0].String(); got != srv.ID {
				t.Errorf("server identity %s, want %s", got, srv.ID)
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "ok" || <-peers != cli.ID {
		t.Errorf("mutual TLS: read %q", b)
	}
	// Without a client certificate the server refuses the handshake.
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	nc.Handshake()
	b, _ = io.ReadAll(nc)
	nc.Close()
	if string(b) == "ok" || <-peers != "" {
		t.Error("a client without a certificate was served")
	}
}
