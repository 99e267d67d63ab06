// Command k8s-testenv-certs writes the PEM files that scripts/k8s-testenv.sh starts
// kube-apiserver with, and optionally an admin kubeconfig, using only Go's standard library (no
// openssl needed):
//
//	ca.crt, ca.key                 self-signed CA (signs the serving and client certificates)
//	apiserver.crt, apiserver.key   serving certificate for 127.0.0.1, ::1, localhost and the
//	                               in-cluster names of the kubernetes Service
//	admin.crt, admin.key           client certificate CN=admin, O=system:masters
//	sa.key, sa.pub                 service-account token signing key pair
//
// Keys are ECDSA P-256 in PKCS#8 ("PRIVATE KEY"), which Go (kube-apiserver, kubectl) and rustls
// (kube-rs) all read. Usage:
//
//	k8s-testenv-certs -dir DIR [-kubeconfig FILE -server https://127.0.0.1:PORT]
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type pair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func main() {
	dir := flag.String("dir", "", "directory to write the PEM files into (created if missing)")
	kubeconfig := flag.String("kubeconfig", "", "also write an admin kubeconfig to this file")
	server := flag.String("server", "", "API server URL for the kubeconfig, e.g. https://127.0.0.1:6443")
	flag.Parse()
	if *dir == "" || flag.NArg() != 0 || (*kubeconfig == "") != (*server == "") {
		fmt.Fprintln(os.Stderr, "usage: k8s-testenv-certs -dir DIR [-kubeconfig FILE -server URL]")
		os.Exit(2)
	}
	if err := run(*dir, *kubeconfig, *server); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-testenv-certs:", err)
		os.Exit(1)
	}
}

func run(dir, kubeconfig, server string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ca, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "spiderpool-test-ca"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil)
	if err != nil {
		return err
	}
	serving, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}, ca)
	if err != nil {
		return err
	}
	admin, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}

	files := []struct {
		name, kind string
		der        []byte
		mode       os.FileMode
	}{
		{"ca.crt", "CERTIFICATE", ca.der, 0o644},
		{"apiserver.crt", "CERTIFICATE", serving.der, 0o644},
		{"admin.crt", "CERTIFICATE", admin.der, 0o644},
		{"sa.pub", "PUBLIC KEY", saPub, 0o644},
	}
	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{"ca.key", ca.key}, {"apiserver.key", serving.key}, {"admin.key", admin.key}, {"sa.key", saKey}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		if err != nil {
			return err
		}
		files = append(files, struct {
			name, kind string
			der        []byte
			mode       os.FileMode
		}{k.name, "PRIVATE KEY", der, 0o600})
	}
	for _, f := range files {
		data := pem.EncodeToMemory(&pem.Block{Type: f.kind, Bytes: f.der})
		if err := write(filepath.Join(dir, f.name), data, f.mode); err != nil {
			return err
		}
	}
	if kubeconfig == "" {
		return nil
	}
	adminKey, err := x509.MarshalPKCS8PrivateKey(admin.key)
	if err != nil {
		return err
	}
	b64 := func(kind string, der []byte) string {
		return base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))
	}
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: spiderpool-test
  cluster:
    server: %q
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: spiderpool-test
  context:
    cluster: spiderpool-test
    user: admin
    namespace: default
current-context: spiderpool-test
preferences: {}
`, server, b64("CERTIFICATE", ca.der), b64("CERTIFICATE", admin.der), b64("PRIVATE KEY", adminKey))
	return write(kubeconfig, []byte(config), 0o600)
}

// issue makes a key and a certificate from template, signed by parent (self-signed when nil).
func issue(template *x509.Certificate, parent *pair) (*pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	template.SerialNumber = serial
	template.NotBefore = now.Add(-time.Hour) // tolerate a little clock skew
	template.NotAfter = now.Add(5 * 365 * 24 * time.Hour)
	signerCert, signerKey := template, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &pair{cert: cert, key: key, der: der}, nil
}

// write replaces path atomically, so a reader never sees half a file.
func write(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
