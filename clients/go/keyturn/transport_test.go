package keyturn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// flakyKeys is an in-process KeyService whose calls fail with UNAVAILABLE
// until failuresLeft is used up, and which records the tokens it was sent.
type flakyKeys struct {
	keyturnv1.UnimplementedKeyServiceServer
	mu           sync.Mutex
	failuresLeft int
	calls        map[string]int
	tokens       []string
}

func (f *flakyKeys) answer(ctx context.Context, method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	md, _ := metadata.FromIncomingContext(ctx)
	f.tokens = append(f.tokens, md.Get("authorization")...)
	if f.failuresLeft > 0 {
		f.failuresLeft--
		return status.Error(codes.Unavailable, "warming up")
	}
	return nil
}

func (f *flakyKeys) GetKey(ctx context.Context, req *keyturnv1.GetKeyRequest) (*keyturnv1.Key, error) {
	if err := f.answer(ctx, "GetKey"); err != nil {
		return nil, err
	}
	return &keyturnv1.Key{Id: req.GetKeyId()}, nil
}

func (f *flakyKeys) GenerateKey(ctx context.Context, _ *keyturnv1.GenerateKeyRequest) (*keyturnv1.GenerateKeyResponse, error) {
	if err := f.answer(ctx, "GenerateKey"); err != nil {
		return nil, err
	}
	return &keyturnv1.GenerateKeyResponse{Key: &keyturnv1.Key{Id: "key_new"}}, nil
}

// serveFlaky runs a flakyKeys (and the standard health service) on a free
// loopback port until the test ends.
func serveFlaky(t *testing.T, failures int, opts ...grpc.ServerOption) (*flakyKeys, string) {
	t.Helper()
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	keys := &flakyKeys{failuresLeft: failures, calls: map[string]int{}}
	server := grpc.NewServer(opts...)
	keyturnv1.RegisterKeyServiceServer(server, keys)
	healthpb.RegisterHealthServer(server, health.NewServer())
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return keys, lis.Addr().String()
}

var fastRetries = keyturn.WithRetryPolicy(keyturn.RetryPolicy{
	MaxAttempts: 4, Backoff: keyturn.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, Multiplier: 2},
})

func TestIdempotentCallIsRetriedAfterUnavailable(t *testing.T) {
	keys, addr := serveFlaky(t, 2)
	c := must(keyturn.NewClient(addr, fastRetries))(t)
	defer c.Close()

	key := must(c.Keys.GetKey(testContext(t), &keyturnv1.GetKeyRequest{KeyId: "key_x"}))(t)
	if key.GetId() != "key_x" || keys.calls["GetKey"] != 3 {
		t.Errorf("GetKey = %v after %d attempts; want success on the 3rd", key, keys.calls["GetKey"])
	}
}

func TestRetriesStopAfterMaxAttempts(t *testing.T) {
	keys, addr := serveFlaky(t, 10)
	c := must(keyturn.NewClient(addr, fastRetries))(t)
	defer c.Close()

	_, err := c.Keys.GetKey(testContext(t), &keyturnv1.GetKeyRequest{KeyId: "key_x"})
	if keyturn.CodeOf(err) != codes.Unavailable || keys.calls["GetKey"] != 4 {
		t.Errorf("GetKey error %v after %d attempts; want UNAVAILABLE after 4", err, keys.calls["GetKey"])
	}
}

func TestCallThatChangesStateIsNotRetried(t *testing.T) {
	keys, addr := serveFlaky(t, 1)
	c := must(keyturn.NewClient(addr, fastRetries))(t)
	defer c.Close()

	_, err := c.Keys.GenerateKey(testContext(t), &keyturnv1.GenerateKeyRequest{Type: "encryption"})
	if keyturn.CodeOf(err) != codes.Unavailable || keys.calls["GenerateKey"] != 1 {
		t.Errorf("GenerateKey error %v after %d attempts; want UNAVAILABLE after 1", err, keys.calls["GenerateKey"])
	}
	if keyturn.Retryable(keyturnv1.HandleService_ValidateHandle_FullMethodName) {
		t.Error("ValidateHandle counts a use and must not be retried")
	}
}

func TestBearerTokenIsSentOverPlaintextToLoopback(t *testing.T) {
	keys, addr := serveFlaky(t, 0)
	c := must(keyturn.NewClient(addr, keyturn.WithToken("kt_secret")))(t)
	defer c.Close()

	must(c.Keys.GetKey(testContext(t), &keyturnv1.GetKeyRequest{KeyId: "key_x"}))(t)
	if len(keys.tokens) != 1 || keys.tokens[0] != "Bearer kt_secret" {
		t.Errorf("server saw authorization %q", keys.tokens)
	}
}

func TestBearerTokenIsSentOverTLS(t *testing.T) {
	cert, roots := selfSignedCertificate(t)
	keys, addr := serveFlaky(t, 0, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	c := must(keyturn.NewClient(addr, keyturn.WithToken("kt_secret"),
		keyturn.WithTLS(&tls.Config{RootCAs: roots, ServerName: "keyturn.test", MinVersion: tls.VersionTLS12})))(t)
	defer c.Close()

	must(c.Keys.GetKey(testContext(t), &keyturnv1.GetKeyRequest{KeyId: "key_x"}))(t)
	if len(keys.tokens) != 1 || keys.tokens[0] != "Bearer kt_secret" {
		t.Errorf("server saw authorization %q", keys.tokens)
	}
}

func TestATokenAHeaderCannotCarryIsRefusedByNewClientWithoutRepeatingIt(t *testing.T) {
	// os.ReadFile keeps a token file's line break; grpc would fail every call
	// with INTERNAL instead, which reads as a server fault.
	for _, token := range []string{"kt_secret\n", "kt_secret\r\n", " kt_secret", "kt_se cret", "kt_se\x01cret", "kt_s\u00e9cret"} {
		client, err := keyturn.NewClient("127.0.0.1:1", keyturn.WithToken(token))
		if err == nil {
			_ = client.Close()
			t.Errorf("NewClient accepted the token %q", token)
			continue
		}
		if strings.Contains(err.Error(), "cret") {
			t.Errorf("the error repeats the token: %v", err)
		}
	}
}

func TestNewClientDoesNoIOAndAWriteToAClosedPortFailsAtOnce(t *testing.T) {
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	addr := lis.Addr().String()
	_ = lis.Close()

	c, err := keyturn.NewClient(addr)
	if err != nil {
		t.Fatalf("NewClient to a closed port = %v; want a client (no I/O yet)", err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Keys.GenerateKey(testContext(t), &keyturnv1.GenerateKeyRequest{Type: "encryption"})
	if keyturn.CodeOf(err) != codes.Unavailable || time.Since(start) > 5*time.Second {
		t.Errorf("GenerateKey to a closed port = %v after %v; want UNAVAILABLE at once", err, time.Since(start))
	}
}

func TestAReadToAClosedPortRetriesUntilItsDeadline(t *testing.T) {
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	addr := lis.Addr().String()
	_ = lis.Close()
	c := must(keyturn.NewClient(addr, keyturn.WithDefaultTimeout(600*time.Millisecond)))(t)
	defer c.Close()

	start := time.Now()
	_, err := c.Keys.GetKey(context.Background(), &keyturnv1.GetKeyRequest{KeyId: "key_x"})
	elapsed := time.Since(start)
	if code := keyturn.CodeOf(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Errorf("GetKey to a closed port = %v; want UNAVAILABLE or DEADLINE_EXCEEDED", err)
	}
	if elapsed < 150*time.Millisecond || elapsed > 5*time.Second {
		t.Errorf("GetKey gave up after %v; want about the 600 ms default deadline", elapsed)
	}
}

func TestAReadWaitingToBeRetriedEndsWhenTheClientCloses(t *testing.T) {
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	addr := lis.Addr().String()
	_ = lis.Close() // every attempt is UNAVAILABLE
	hours := keyturn.RetryPolicy{Backoff: keyturn.Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2}}
	c := must(keyturn.NewClient(addr, keyturn.WithRetryPolicy(hours), keyturn.WithDefaultTimeout(0)))(t)
	ended := make(chan error, 1)
	go func() {
		_, err := c.Keys.GetKey(context.Background(), &keyturnv1.GetKeyRequest{KeyId: "key_x"})
		ended <- err
	}()

	time.Sleep(300 * time.Millisecond) // the first attempt failed: the retry waits
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if keyturn.CodeOf(err) != codes.Canceled {
			t.Errorf("a read cut short by Close ended with %v, want CANCELED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read still waits out its backoff after its client closed")
	}
}

// selfSignedCertificate makes a server certificate for "keyturn.test" and a
// pool that trusts it.
func selfSignedCertificate(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "keyturn.test"},
		DNSNames:     []string{"keyturn.test"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der := must(x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key))(t)
	parsed := must(x509.ParseCertificate(der))(t)
	roots := x509.NewCertPool()
	roots.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}, roots
}
