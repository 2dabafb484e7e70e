package keyturn_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

func TestGeneratedKeyIsActiveWithVersionOneAsPrimary(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)

	resp := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{
		Type:     "encryption",
		Metadata: map[string]string{"purpose": "data-encryption", "environment": "test"},
		UserId:   "user123",
	}))(t)
	key := resp.GetKey()
	if key.GetId() == "" || key.GetType() != "encryption" || key.GetAlgorithm() != "aes-256-gcm" {
		t.Fatalf("generated key = %v", key)
	}
	if key.GetStatus() != keyturnv1.KeyStatus_KEY_STATUS_ACTIVE || key.GetPrimaryVersion() != 1 {
		t.Errorf("status %v, primary %d; want ACTIVE, 1", key.GetStatus(), key.GetPrimaryVersion())
	}
	if len(resp.GetMaterial()) != 0 {
		t.Error("material returned without reveal")
	}

	got := must(c.Keys.GetKey(ctx, &keyturnv1.GetKeyRequest{KeyId: key.GetId()}))(t)
	if got.GetId() != key.GetId() || got.GetMetadata()["purpose"] != "data-encryption" {
		t.Errorf("GetKey = %v", got)
	}
}

func TestRotatedKeyStillDecryptsWhatItsOldVersionEncrypted(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption"}))(t).GetKey()
	plaintext, aad := []byte("attack at dawn"), []byte("record-42")

	sealed := must(c.Keys.Encrypt(ctx, &keyturnv1.EncryptRequest{
		KeyId: key.GetId(), Plaintext: plaintext, AssociatedData: aad,
	}))(t)
	if sealed.GetKeyVersion() != 1 || bytes.Contains(sealed.GetCiphertext(), plaintext) {
		t.Fatalf("Encrypt = version %d, ciphertext %x", sealed.GetKeyVersion(), sealed.GetCiphertext())
	}

	rotated := must(c.Keys.RotateKey(ctx, &keyturnv1.RotateKeyRequest{KeyId: key.GetId(), Reason: "test"}))(t)
	if rotated.GetPrimaryVersion() != 2 || len(rotated.GetVersions()) != 2 {
		t.Fatalf("after rotation: primary %d, %d versions", rotated.GetPrimaryVersion(), len(rotated.GetVersions()))
	}

	opened := must(c.Keys.Decrypt(ctx, &keyturnv1.DecryptRequest{
		KeyId: key.GetId(), Ciphertext: sealed.GetCiphertext(), AssociatedData: aad,
	}))(t)
	if !bytes.Equal(opened.GetPlaintext(), plaintext) || opened.GetKeyVersion() != 1 || opened.GetUsedPrimary() {
		t.Errorf("Decrypt = %q, version %d, used primary %v; want the plaintext, version 1, false",
			opened.GetPlaintext(), opened.GetKeyVersion(), opened.GetUsedPrimary())
	}

	resealed := must(c.Keys.Encrypt(ctx, &keyturnv1.EncryptRequest{KeyId: key.GetId(), Plaintext: plaintext}))(t)
	if resealed.GetKeyVersion() != 2 {
		t.Errorf("Encrypt after rotation used version %d, want 2", resealed.GetKeyVersion())
	}
}

func TestDisabledVersionRefusesToDecryptUntilEnabledAgain(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption"}))(t).GetKey()
	plaintext := []byte("old secret")
	sealed := must(c.Keys.Encrypt(ctx, &keyturnv1.EncryptRequest{KeyId: key.GetId(), Plaintext: plaintext}))(t)
	if sealed.GetKeyVersion() != 1 {
		t.Fatalf("Encrypt used version %d, want 1", sealed.GetKeyVersion())
	}
	must(c.Keys.RotateKey(ctx, &keyturnv1.RotateKeyRequest{KeyId: key.GetId()}))(t)
	decrypt := &keyturnv1.DecryptRequest{KeyId: key.GetId(), Ciphertext: sealed.GetCiphertext()}

	disabled := must(c.Keys.DisableKeyVersion(ctx, &keyturnv1.DisableKeyVersionRequest{
		KeyId: key.GetId(), Version: 1, Reason: "suspected leak",
	}))(t)
	if versionState(disabled, 1) != keyturnv1.KeyVersionState_KEY_VERSION_STATE_DISABLED ||
		versionState(disabled, 2) != keyturnv1.KeyVersionState_KEY_VERSION_STATE_ENABLED {
		t.Errorf("after DisableKeyVersion: versions %v; want 1 DISABLED, 2 ENABLED", disabled.GetVersions())
	}
	_, err := c.Keys.Decrypt(ctx, decrypt)
	var kerr *keyturn.Error
	if !errors.As(err, &kerr) {
		t.Fatalf("Decrypt with a disabled version: error %v (%T) is not a *keyturn.Error", err, err)
	}
	if kerr.Code != codes.FailedPrecondition || kerr.Reason != "VERSION_DISABLED" || kerr.Metadata["version"] != "1" {
		t.Errorf("error = %#v; want FAILED_PRECONDITION, reason VERSION_DISABLED, metadata version 1", kerr)
	}

	enabled := must(c.Keys.EnableKeyVersion(ctx, &keyturnv1.EnableKeyVersionRequest{
		KeyId: key.GetId(), Version: 1, Reason: "false alarm",
	}))(t)
	if versionState(enabled, 1) != keyturnv1.KeyVersionState_KEY_VERSION_STATE_ENABLED {
		t.Errorf("after EnableKeyVersion: versions %v; want 1 ENABLED", enabled.GetVersions())
	}
	opened := must(c.Keys.Decrypt(ctx, decrypt))(t)
	if !bytes.Equal(opened.GetPlaintext(), plaintext) || opened.GetKeyVersion() != 1 {
		t.Errorf("Decrypt after EnableKeyVersion = %q, version %d", opened.GetPlaintext(), opened.GetKeyVersion())
	}
}

// versionState is the state of the key's version numbered v.
func versionState(key *keyturnv1.Key, v uint32) keyturnv1.KeyVersionState {
	for _, version := range key.GetVersions() {
		if version.GetVersion() == v {
			return version.GetState()
		}
	}
	return keyturnv1.KeyVersionState_KEY_VERSION_STATE_UNSPECIFIED
}

func TestSignatureVerifiesOnServerAndWithThePublicKey(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "signing"}))(t).GetKey()
	data := []byte("release v1.2.3")

	signed := must(c.Keys.Sign(ctx, &keyturnv1.SignRequest{KeyId: key.GetId(), Data: data}))(t)
	verified := must(c.Keys.Verify(ctx, &keyturnv1.VerifyRequest{KeyId: key.GetId(), Data: data, Signature: signed.GetSignature()}))(t)
	if !verified.GetValid() || verified.GetKeyVersion() != 1 {
		t.Errorf("Verify = %v", verified)
	}
	tampered := must(c.Keys.Verify(ctx, &keyturnv1.VerifyRequest{KeyId: key.GetId(), Data: []byte("release v6.6.6"), Signature: signed.GetSignature()}))(t)
	if tampered.GetValid() {
		t.Error("Verify accepted a signature over different data")
	}

	public := must(c.Keys.GetPublicKey(ctx, &keyturnv1.GetPublicKeyRequest{KeyId: key.GetId()}))(t)
	block, _ := pem.Decode([]byte(public.GetPem()))
	if block == nil {
		t.Fatalf("GetPublicKey returned no PEM block: %q", public.GetPem())
	}
	parsed := must(x509.ParsePKIXPublicKey(block.Bytes))(t)
	rsaKey, ok := parsed.(*rsa.PublicKey)
	if !ok {
		t.Fatalf("public key is %T, want *rsa.PublicKey", parsed)
	}
	digest := sha256.Sum256(data)
	opts := &rsa.PSSOptions{SaltLength: 32, Hash: crypto.SHA256}
	if err := rsa.VerifyPSS(rsaKey, crypto.SHA256, digest[:], signed.GetRawSignature(), opts); err != nil {
		t.Errorf("raw signature does not verify with the public key (RSA-PSS, SHA-256, salt 32): %v", err)
	}
}

func TestKeysAllWalksEveryPage(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	// A type of our own would need a config change; a metadata marker on
	// "session" keys and a small page size exercise the paging just as well.
	marker := fmt.Sprintf("go-paging-%s", t.Name())
	want := map[string]bool{}
	for range 5 {
		key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{
			Type: "session", Metadata: map[string]string{"marker": marker},
		}))(t).GetKey()
		want[key.GetId()] = true
	}

	req := &keyturnv1.ListKeysRequest{Type: "session", PageSize: 2}
	first := must(c.Keys.ListKeys(ctx, req))(t)
	if len(first.GetKeys()) != 2 || first.GetNextPageToken() == "" || first.GetTotalSize() < 5 {
		t.Fatalf("first page: %d keys, next %q, total %d", len(first.GetKeys()), first.GetNextPageToken(), first.GetTotalSize())
	}

	seen := map[string]bool{}
	count := 0
	for key, err := range c.Keys.All(ctx, req) {
		if err != nil {
			t.Fatal(err)
		}
		if seen[key.GetId()] {
			t.Fatalf("key %s listed twice", key.GetId())
		}
		seen[key.GetId()] = true
		count++
	}
	if int64(count) < first.GetTotalSize() {
		t.Errorf("All yielded %d keys, total_size said %d", count, first.GetTotalSize())
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("key %s missing from All", id)
		}
	}
	if req.GetPageToken() != "" {
		t.Error("All changed the caller's request")
	}
}

// replayingPageTokens is a unary interceptor that plays a proxy replaying
// pages: from the (cycle+1)th next_page_token of ListKeys on, it answers with
// the token it handed out cycle pages before. It records what it handed out.
func replayingPageTokens(cycle int, handedOut *[]string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		page, ok := reply.(*keyturnv1.ListKeysResponse)
		if err != nil || !ok || page.GetNextPageToken() == "" {
			return err
		}
		*handedOut = append(*handedOut, page.GetNextPageToken())
		if n := len(*handedOut); n > cycle {
			page.NextPageToken = (*handedOut)[n-1-cycle]
		}
		return nil
	}
}

func TestARepeatedPageTokenEndsAllWithAnErrorInsteadOfLooping(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cycle int
	}{{"same token again", 1}, {"cycle of two tokens", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			var handedOut []string
			c := liveClient(t, keyturn.WithDialOptions(
				grpc.WithChainUnaryInterceptor(replayingPageTokens(tc.cycle, &handedOut))))
			ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
			defer cancel()
			for range 5 {
				must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "session"}))(t)
			}

			seen := map[string]bool{}
			var last error
			for key, err := range c.Keys.All(ctx, &keyturnv1.ListKeysRequest{PageSize: 1}) {
				if err != nil {
					last = err
					break
				}
				if seen[key.GetId()] {
					t.Fatalf("key %s listed twice", key.GetId())
				}
				seen[key.GetId()] = true
			}
			var kerr *keyturn.Error
			if !errors.As(last, &kerr) || kerr.Code != codes.Internal || kerr.Reason != "PAGE_TOKEN_REPEATED" {
				t.Fatalf("the walk ended with %v, want INTERNAL (PAGE_TOKEN_REPEATED)", last)
			}
			if len(seen) != tc.cycle+1 {
				t.Errorf("yielded %d keys before the error, want %d (each page once)", len(seen), tc.cycle+1)
			}
			for _, token := range handedOut {
				if strings.Contains(last.Error(), token) {
					t.Errorf("the error %q shows a page token", last)
				}
			}
		})
	}
}
