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
// Every error returned by a Client's RPCs is an *Error. Match its code with
// CodeOf (switch keyturn.CodeOf(err) { case codes.NotFound: ... }); read its
// reason and details through errors.As. It still works with status.Code and
// status.FromError, and errors.Is(err, context.DeadlineExceeded) (or
// context.Canceled) holds for DEADLINE_EXCEEDED (CANCELED).
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

// Is makes errors.Is(err, context.DeadlineExceeded) and
// errors.Is(err, context.Canceled) hold for the matching codes, as they do for
// a context that ran out.
func (e *Error) Is(target error) bool {
	switch target {
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
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

// asError returns err as an *Error: itself when it already is (or wraps) one,
// or the decoded gRPC status it carries. It returns nil for nil and for errors
// that carry no gRPC status.
func asError(err error) *Error {
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
	if e := asError(err); e != nil {
		return e
	}
	return err
}

// CodeOf returns the gRPC code of err: OK for nil, Canceled or
// DeadlineExceeded for the context errors, Unknown for any other error
// without a status. It is the way to match a Keyturn error by code.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if e := asError(err); e != nil {
		return e.Code
	}
	return status.FromContextError(err).Code()
}
