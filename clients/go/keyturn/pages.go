package keyturn

import (
	"context"
	"fmt"
	"iter"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// fetchPage returns the items of the page at token and the next page's token.
type fetchPage[T any] func(ctx context.Context, token string) (items []T, next string, err error)

// paginate walks pages from the first token until the server returns an
// empty next_page_token. An error is yielded once and ends the sequence.
//
// A next_page_token already followed (a server or proxy replaying a page)
// would walk the same pages for ever: it ends the walk with an *Error of code
// Internal and reason PAGE_TOKEN_REPEATED, as gRPC reports a malformed answer,
// rather than a quiet stop the caller would take for the complete list.
func paginate[T any](ctx context.Context, first string, fetch fetchPage[T]) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		token := first
		followed := map[string]bool{token: true}
		for {
			items, next, err := fetch(ctx, token)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, item := range items {
				if !yield(item, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if followed[next] {
				var zero T
				yield(zero, pageTokenRepeated(len(followed)))
				return
			}
			followed[next] = true
			token = next
		}
	}
}

// pageTokenRepeated is the error of a list whose server gave a page token
// again; the token itself stays out of it.
func pageTokenRepeated(pages int) *Error {
	return &Error{
		Code: codes.Internal,
		Message: fmt.Sprintf("the server returned an already followed next_page_token after %d page(s): "+
			"the list cannot be walked further", pages),
		Reason: "PAGE_TOKEN_REPEATED",
	}
}

// cloneOrNew copies req so that paging never changes the caller's message.
func cloneOrNew[T any, M interface {
	*T
	proto.Message
}](req M) M {
	if req == nil {
		return M(new(T))
	}
	return proto.CloneOf(req)
}

// All yields every key matching req's filters, page by page (req.PageSize
// sets the page size; req may be nil). Stop early with break.
func (k *Keys) All(ctx context.Context, req *keyturnv1.ListKeysRequest) iter.Seq2[*keyturnv1.Key, error] {
	req = cloneOrNew(req)
	return paginate(ctx, req.GetPageToken(), func(ctx context.Context, token string) ([]*keyturnv1.Key, string, error) {
		page := proto.CloneOf(req)
		page.PageToken = token
		resp, err := k.ListKeys(ctx, page)
		return resp.GetKeys(), resp.GetNextPageToken(), err
	})
}

// All yields every handle matching req's filters, page by page.
func (h *Handles) All(ctx context.Context, req *keyturnv1.ListHandlesRequest) iter.Seq2[*keyturnv1.Handle, error] {
	req = cloneOrNew(req)
	return paginate(ctx, req.GetPageToken(), func(ctx context.Context, token string) ([]*keyturnv1.Handle, string, error) {
		page := proto.CloneOf(req)
		page.PageToken = token
		resp, err := h.ListHandles(ctx, page)
		return resp.GetHandles(), resp.GetNextPageToken(), err
	})
}

// AllAuditEvents yields every audit event matching req's filters, page by page.
func (a *Admin) AllAuditEvents(ctx context.Context, req *keyturnv1.ListAuditEventsRequest) iter.Seq2[*keyturnv1.AuditEvent, error] {
	req = cloneOrNew(req)
	return paginate(ctx, req.GetPageToken(), func(ctx context.Context, token string) ([]*keyturnv1.AuditEvent, string, error) {
		page := proto.CloneOf(req)
		page.PageToken = token
		resp, err := a.ListAuditEvents(ctx, page)
		return resp.GetEvents(), resp.GetNextPageToken(), err
	})
}
