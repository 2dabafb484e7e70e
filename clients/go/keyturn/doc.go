// Package keyturn is the Go client of Keyturn, a key-management and
// credential-rotation service.
//
// Dial returns a Client whose Keys, Handles and Admin fields are the
// generated keyturn.v1 service clients (package
// github.com/keyturn/keyturn/clients/go/gen/keyturn/v1), extended with:
//   - bearer-token authentication (WithToken), TLS by default and plaintext
//     for loopback addresses (WithTLS, WithPlaintext);
//   - typed errors (see below);
//   - retries of UNAVAILABLE, with backoff, for idempotent calls only
//     (RetryPolicy, IsIdempotent);
//   - iterators over paginated lists (Keys.All, Handles.All, Admin.AllAuditEvents);
//   - WatchExpiring (Keys.Watch, Handles.Watch): an event stream that
//     reconnects by itself and resumes from the last sequence it saw, so each
//     event arrives exactly once across server restarts.
//
// # Errors
//
// Every RPC error is an *Error carrying the code, the ErrorInfo reason and
// metadata and the BadRequest field violations. Match it at the level you need:
//
//	var kerr *keyturn.Error
//	errors.As(err, &kerr)                   // any Keyturn error, with its details
//	errors.Is(err, keyturn.ErrNotFound)     // by code; also keyturn.IsNotFound(err)
//	keyturn.HasReason(err, "KEY_NOT_FOUND") // by reason
//	status.Code(err)                        // plain gRPC still works
package keyturn
