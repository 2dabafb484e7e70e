package keyturn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of errors raised by the Keyturn server.
const Domain = "keyturn.dev"

// Error is a failed Keyturn call: the gRPC status code and message plus the
// rich details the server sends in grpc-status-details-bin.
//
// Every error returned by a Client's RPCs is an *Error (use errors.As), and it
// still works with status.Code and status.FromError. Match it by code with the
// sentinels (errors.Is(err, keyturn.ErrNotFound)) or the Is* predicates, and by
// reason with HasReason.
type Error struct {
	Code    codes.Code
	Message string
	// Reason is the machine-readable ErrorInfo reason, e.g. "KEY_NOT_FOUND".
	Reason string
	// Domain is the ErrorInfo domain, "keyturn.dev" for server errors.
	Domain string
	// Metadata is the ErrorInfo metadata, e.g. {"key_id": "..."}.
	Metadata map[string]string
	// FieldViolations come from a google.rpc.BadRequest (INVALID_ARGUMENT).
	FieldViolations []FieldViolation
	// RetryDelay comes from a google.rpc.RetryInfo (RESOURCE_EXHAUSTED); 0 when absent.
	RetryDelay time.Duration

	status *status.Status
}

// FieldViolation names one invalid request field and why it is invalid.
type FieldViolation struct {
	Field       string
	Description string
	Reason      string
}

// Sentinels for errors.Is: each matches every *Error with the same code.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrAborted            = &Error{Code: codes.Aborted}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}
	ErrOutOfRange         = &Error{Code: codes.OutOfRange}
	ErrDataLoss           = &Error{Code: codes.DataLoss}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
	ErrInternal           = &Error{Code: codes.Internal}
	ErrUnimplemented      = &Error{Code: codes.Unimplemented}
	ErrDeadlineExceeded   = &Error{Code: codes.DeadlineExceeded}
	ErrCanceled           = &Error{Code: codes.Canceled}
)

// Error formats as "keyturn: NOT_FOUND: message (reason KEY_NOT_FOUND)",
// naming the fields of any violations the message does not already spell out.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("keyturn: ")
	b.WriteString(code.Code(e.Code).String())
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	var extra []string
	if e.Reason != "" && e.Reason != code.Code(e.Code).String() {
		extra = append(extra, "reason "+e.Reason)
	}
	for _, v := range e.FieldViolations {
		if strings.Contains(e.Message, v.Description) {
			extra = append(extra, "field "+v.Field)
		} else {
			extra = append(extra, v.Field+": "+v.Description)
		}
	}
	if len(extra) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(extra, "; "))
	}
	return b.String()
}

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	return status.New(e.Code, e.Message)
}

// Is matches a target *Error whose non-zero Code and Reason equal this
// error's (so the sentinels match by code, and &Error{Reason: "KEY_NOT_FOUND"}
// by reason), and the context errors for CANCELLED and DEADLINE_EXCEEDED.
func (e *Error) Is(target error) bool {
	switch target {
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	t, ok := target.(*Error)
	if !ok || (t.Code == codes.OK && t.Reason == "") {
		return false
	}
	return (t.Code == codes.OK || t.Code == e.Code) && (t.Reason == "" || t.Reason == e.Reason)
}

// FieldViolation returns the violation reported for field, if any.
func (e *Error) FieldViolation(field string) (FieldViolation, bool) {
	for _, v := range e.FieldViolations {
		if v.Field == field {
			return v, true
		}
	}
	return FieldViolation{}, false
}

// AsError returns err as an *Error: itself when it already is (or wraps) one,
// or the decoded gRPC status it carries. It returns nil for nil and for errors
// that carry no gRPC status.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	return fromStatus(st)
}

// fromStatus decodes ErrorInfo, BadRequest and RetryInfo from a status.
func fromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain, e.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{
					Field: v.GetField(), Description: v.GetDescription(), Reason: v.GetReason(),
				})
			}
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}

// convertError turns a gRPC status error into an *Error; other errors pass.
func convertError(err error) error {
	if err == nil {
		return nil
	}
	if e := AsError(err); e != nil {
		return e
	}
	return err
}

// CodeOf returns the gRPC code of err: OK for nil, Unknown for an error
// without a status.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if e := AsError(err); e != nil {
		return e.Code
	}
	return status.FromContextError(err).Code()
}

// HasReason reports whether err carries the ErrorInfo reason (e.g. "KEY_NOT_FOUND").
func HasReason(err error, reason string) bool {
	e := AsError(err)
	return e != nil && e.Reason == reason
}

// IsInvalidArgument reports whether err is INVALID_ARGUMENT.
func IsInvalidArgument(err error) bool { return CodeOf(err) == codes.InvalidArgument }

// IsNotFound reports whether err is NOT_FOUND.
func IsNotFound(err error) bool { return CodeOf(err) == codes.NotFound }

// IsAlreadyExists reports whether err is ALREADY_EXISTS.
func IsAlreadyExists(err error) bool { return CodeOf(err) == codes.AlreadyExists }

// IsFailedPrecondition reports whether err is FAILED_PRECONDITION (wrong state).
func IsFailedPrecondition(err error) bool { return CodeOf(err) == codes.FailedPrecondition }

// IsAborted reports whether err is ABORTED (stale etag, watch overflow).
func IsAborted(err error) bool { return CodeOf(err) == codes.Aborted }

// IsResourceExhausted reports whether err is RESOURCE_EXHAUSTED (rate or quota).
func IsResourceExhausted(err error) bool { return CodeOf(err) == codes.ResourceExhausted }

// IsUnauthenticated reports whether err is UNAUTHENTICATED.
func IsUnauthenticated(err error) bool { return CodeOf(err) == codes.Unauthenticated }

// IsPermissionDenied reports whether err is PERMISSION_DENIED.
func IsPermissionDenied(err error) bool { return CodeOf(err) == codes.PermissionDenied }

// IsOutOfRange reports whether err is OUT_OF_RANGE (stale resume point).
func IsOutOfRange(err error) bool { return CodeOf(err) == codes.OutOfRange }

// IsDataLoss reports whether err is DATA_LOSS (stored ciphertext failed authentication).
func IsDataLoss(err error) bool { return CodeOf(err) == codes.DataLoss }

// IsUnavailable reports whether err is UNAVAILABLE.
func IsUnavailable(err error) bool { return CodeOf(err) == codes.Unavailable }
