// Package keyturn is the Go client of Keyturn, a key-management and
// credential-rotation service.
//
// NewClient returns a Client whose Keys, Handles and Admin fields are the
// generated keyturn.v1 service clients (package
// github.com/keyturn/keyturn/clients/go/gen/keyturn/v1), extended with the
// policy every Keyturn client shares (clients/README.md in the repository):
//   - bearer-token authentication (WithToken), TLS unless the address is
//     loopback (WithTLS, WithPlaintext);
//   - one deadline per unary call: the context's, else DefaultTimeout
//     (WithDefaultTimeout), shared by all its attempts;
//   - retries of the calls the API marks NO_SIDE_EFFECTS or IDEMPOTENT (read
//     from the generated descriptors: Retryable) after UNAVAILABLE, or
//     RESOURCE_EXHAUSTED with a RetryInfo, with jittered backoff
//     (RetryPolicy);
//   - iterators over paginated lists (Keys.All, Handles.All, Admin.AllAuditEvents);
//   - WatchExpiring (Keys.Watch, Handles.Watch): an event stream that
//     reconnects by itself and resumes from the last sequence it saw, so each
//     event arrives exactly once across server restarts.
//
// # Errors
//
// Every RPC error is an *Error carrying the code, the ErrorInfo reason and
// metadata, the BadRequest field violations and the RetryInfo delay. Match
// its code with CodeOf, and read the rest through errors.As:
//
//	switch keyturn.CodeOf(err) {
//	case codes.NotFound:
//		var kerr *keyturn.Error
//		if errors.As(err, &kerr) && kerr.Reason == "KEY_NOT_FOUND" { ... }
//	}
package keyturn
