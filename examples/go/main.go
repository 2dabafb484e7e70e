// Command example is the specification's usage example on the Go client: it
// generates an encryption key and a workflow handle, validates the handle
// with the caller's ip and user agent, and prints health and statistics.
//
// It reads KEYTURN_ADDRESS (host:port) and KEYTURN_TOKEN, and exits non-zero
// on any failure.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// keyManager gathers the calls of the specification's example.
type keyManager struct{ client *keyturn.Client }

// generateEncryptionKey generates a new encryption key.
func (m keyManager) generateEncryptionKey(ctx context.Context, userID string) (*keyturnv1.Key, error) {
	resp, err := m.client.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{
		Type:     "encryption",
		Metadata: map[string]string{"purpose": "data-encryption", "environment": "production"},
		UserId:   userID,
	})
	return resp.GetKey(), err
}

// generateWorkflowHandle issues a workflow handle; the secret token is
// returned once, here.
func (m keyManager) generateWorkflowHandle(ctx context.Context, userID string, handleContext map[string]string) (*keyturnv1.GenerateHandleResponse, error) {
	withEnvironment := map[string]string{"environment": "production"}
	for k, v := range handleContext {
		withEnvironment[k] = v
	}
	return m.client.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{
		Type: "workflow", Context: withEnvironment, UserId: userID,
	})
}

// validateHandle checks a handle's token (the secret, not the public id) in
// the context of one use.
func (m keyManager) validateHandle(ctx context.Context, token, userID, ip, userAgent string) (*keyturnv1.Validation, error) {
	resp, err := m.client.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{
		Token:   token,
		Context: map[string]string{"ip": ip, "user_agent": userAgent},
		UserId:  userID,
	})
	return resp.GetValidation(), err
}

// getHealth returns the system health.
func (m keyManager) getHealth(ctx context.Context) (*keyturnv1.Health, error) {
	resp, err := m.client.Admin.GetHealth(ctx, &keyturnv1.GetHealthRequest{})
	return resp.GetHealth(), err
}

// getStatistics fetches key and handle statistics concurrently.
func (m keyManager) getStatistics(ctx context.Context) (*keyturnv1.KeyStatistics, *keyturnv1.HandleStatistics, error) {
	var (
		wg                  sync.WaitGroup
		keys                *keyturnv1.GetKeyStatisticsResponse
		handles             *keyturnv1.GetHandleStatisticsResponse
		keysErr, handlesErr error
	)
	wg.Go(func() { keys, keysErr = m.client.Keys.GetKeyStatistics(ctx, &keyturnv1.GetKeyStatisticsRequest{}) })
	wg.Go(func() {
		handles, handlesErr = m.client.Handles.GetHandleStatistics(ctx, &keyturnv1.GetHandleStatisticsRequest{})
	})
	wg.Wait()
	return keys.GetStatistics(), handles.GetStatistics(), errors.Join(keysErr, handlesErr)
}

func example(ctx context.Context, m keyManager) error {
	key, err := m.generateEncryptionKey(ctx, "user123")
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	fmt.Println("Generated key:", key.GetId())

	handle, err := m.generateWorkflowHandle(ctx, "user123", map[string]string{
		"workflow": "data-processing",
		"session":  "session123",
	})
	if err != nil {
		return fmt.Errorf("generate handle: %w", err)
	}
	fmt.Println("Generated handle:", handle.GetHandle().GetId())

	validation, err := m.validateHandle(ctx, handle.GetToken(), "user123", "192.168.1.100", "MyApp/1.0")
	if err != nil {
		return fmt.Errorf("validate handle: %w", err)
	}
	fmt.Println("Handle valid:", validation.GetValid())
	if !validation.GetValid() {
		return fmt.Errorf("the new handle did not validate: %v", validation.GetReason())
	}

	health, err := m.getHealth(ctx)
	if err != nil {
		return fmt.Errorf("get health: %w", err)
	}
	fmt.Println("System health:", asJSON(health))

	keyStats, handleStats, err := m.getStatistics(ctx)
	if err != nil {
		return fmt.Errorf("get statistics: %w", err)
	}
	fmt.Println("Key statistics:", asJSON(keyStats))
	fmt.Println("Handle statistics:", asJSON(handleStats))
	return nil
}

// asJSON renders m as indented JSON (protojson alone varies its spacing).
func asJSON(m proto.Message) string {
	var out bytes.Buffer
	if err := json.Indent(&out, []byte(protojson.Format(m)), "", "  "); err != nil {
		return protojson.Format(m)
	}
	return out.String()
}

func run() error {
	addr := os.Getenv("KEYTURN_ADDRESS")
	if addr == "" {
		addr = "127.0.0.1:50051"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := keyturn.NewClient(addr, keyturn.WithToken(os.Getenv("KEYTURN_TOKEN")))
	if err != nil {
		return err
	}
	defer client.Close()
	return example(ctx, keyManager{client})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		// The message names the server's reason; show the rest of its details.
		var kerr *keyturn.Error
		if errors.As(err, &kerr) && (len(kerr.Metadata) > 0 || len(kerr.FieldViolations) > 0) {
			fmt.Fprintf(os.Stderr, "metadata %v, field violations %v\n", kerr.Metadata, kerr.FieldViolations)
		}
		os.Exit(1)
	}
}
