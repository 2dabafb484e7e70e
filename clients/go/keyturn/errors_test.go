package keyturn_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

func TestUnknownKeyIsNotFoundWithReasonKeyNotFound(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	// A well-formed id that names no key.
	_, err := c.Keys.GetKey(ctx, &keyturnv1.GetKeyRequest{KeyId: "key_aaaaaaaaaaaaaaaa"})

	var kerr *keyturn.Error
	if !errors.As(err, &kerr) {
		t.Fatalf("GetKey error %v (%T) is not a *keyturn.Error", err, err)
	}
	if kerr.Code != codes.NotFound || kerr.Reason != "KEY_NOT_FOUND" || kerr.Domain != keyturn.Domain {
		t.Errorf("error = %#v; want NOT_FOUND, reason KEY_NOT_FOUND, domain %s", kerr, keyturn.Domain)
	}
	if keyturn.CodeOf(err) != codes.NotFound {
		t.Errorf("CodeOf = %v, want NotFound", keyturn.CodeOf(err))
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("status.Code = %v, want NotFound", status.Code(err))
	}
}

func TestUnknownKeyTypeIsInvalidArgumentNamingTheTypeField(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	_, err := c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "no-such-type"})

	var kerr *keyturn.Error
	if keyturn.CodeOf(err) != codes.InvalidArgument || !errors.As(err, &kerr) {
		t.Fatalf("GenerateKey error = %v; want INVALID_ARGUMENT", err)
	}
	if kerr.Reason != "INVALID_ARGUMENT" {
		t.Errorf("reason = %q", kerr.Reason)
	}
	violation, ok := kerr.FieldViolation("type")
	if !ok || violation.Description == "" {
		t.Errorf("field violations = %v; want one for \"type\"", kerr.FieldViolations)
	}
}

// statusWith builds the status a Keyturn server sends, with rich details.
func statusWith(t *testing.T, c codes.Code, msg string, details ...*errdetails.ErrorInfo) *status.Status {
	t.Helper()
	st := status.New(c, msg)
	for _, d := range details {
		st = must(st.WithDetails(d))(t)
	}
	return st
}

func TestAsErrorDecodesErrorInfoBadRequestAndRetryInfo(t *testing.T) {
	st := status.New(codes.InvalidArgument, "2 fields are invalid")
	st = must(st.WithDetails(
		&errdetails.ErrorInfo{Reason: "INVALID_ARGUMENT", Domain: keyturn.Domain, Metadata: map[string]string{"n": "2"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "type", Description: "required"},
			{Field: "metadata['k']", Description: "too long", Reason: "TOO_LONG"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)},
	))(t)

	got := keyturn.AsError(st.Err())
	want := []keyturn.FieldViolation{{Field: "type", Description: "required"}, {Field: "metadata['k']", Description: "too long", Reason: "TOO_LONG"}}
	if got.Code != codes.InvalidArgument || got.Message != "2 fields are invalid" || got.Metadata["n"] != "2" || got.RetryDelay != 3*time.Second {
		t.Errorf("decoded %#v", got)
	}
	if fmt.Sprint(got.FieldViolations) != fmt.Sprint(want) {
		t.Errorf("field violations = %v, want %v", got.FieldViolations, want)
	}
	if got.Error() != "keyturn: INVALID_ARGUMENT: 2 fields are invalid (type: required; metadata['k']: too long)" {
		t.Errorf("Error() = %q", got.Error())
	}
	if status.Convert(got).Proto().String() != st.Proto().String() {
		t.Error("GRPCStatus does not return the original status")
	}
}

func TestAWrappedErrorKeepsItsCodeAndDetails(t *testing.T) {
	overflow := keyturn.AsError(statusWith(t, codes.Aborted, "subscriber fell behind",
		&errdetails.ErrorInfo{Reason: "WATCH_OVERFLOW", Domain: keyturn.Domain, Metadata: map[string]string{"resume_after": "41"}}).Err())
	wrapped := fmt.Errorf("watching: %w", overflow)

	var kerr *keyturn.Error
	if keyturn.CodeOf(wrapped) != codes.Aborted || !errors.As(wrapped, &kerr) {
		t.Fatalf("CodeOf(%v) = %v; want ABORTED, and an *Error inside", wrapped, keyturn.CodeOf(wrapped))
	}
	if kerr.Reason != "WATCH_OVERFLOW" || kerr.Metadata["resume_after"] != "41" {
		t.Errorf("wrapped error lost its details: %#v", kerr)
	}
	if errors.Is(wrapped, context.Canceled) || errors.Is(wrapped, context.DeadlineExceeded) {
		t.Error("an ABORTED matches a context error")
	}
}

func TestDeadlineErrorsMatchTheContextError(t *testing.T) {
	err := keyturn.AsError(status.Error(codes.DeadlineExceeded, "context deadline exceeded"))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is on %v and the context errors is wrong", err)
	}
	if keyturn.CodeOf(context.Canceled) != codes.Canceled || keyturn.CodeOf(nil) != codes.OK ||
		keyturn.CodeOf(errors.New("plain")) != codes.Unknown || keyturn.AsError(errors.New("plain")) != nil {
		t.Error("CodeOf or AsError mishandles errors without a status")
	}
}
