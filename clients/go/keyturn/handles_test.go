package keyturn_test

import (
	"testing"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// boundContext is the ip and user agent a workflow handle is issued for.
var boundContext = map[string]string{"ip": "192.168.1.100", "user_agent": "MyApp/1.0"}

func TestWorkflowHandleValidatesWithItsTokenAndCountsTheUse(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{
		Type: "workflow",
		Context: map[string]string{
			"workflow": "data-processing", "environment": "test",
			"ip": boundContext["ip"], "user_agent": boundContext["user_agent"],
		},
		UserId: "user123",
	}))(t)
	handle := issued.GetHandle()
	if issued.GetToken() == "" || handle.GetId() == "" || handle.GetType() != "workflow" {
		t.Fatalf("GenerateHandle = %v", issued)
	}
	if handle.GetMaxUsage() != 100 || handle.GetStatus() != keyturnv1.HandleStatus_HANDLE_STATUS_ACTIVE {
		t.Errorf("handle = %v; want ACTIVE with max usage 100", handle)
	}

	v := must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{
		Token: issued.GetToken(), Context: boundContext, UserId: "user123",
	}))(t).GetValidation()
	if !v.GetValid() || v.GetHandleId() != handle.GetId() || v.GetRemainingUses() != 99 {
		t.Errorf("validation = %v; want valid for %s with 99 uses left", v, handle.GetId())
	}

	got := must(c.Handles.GetHandle(ctx, &keyturnv1.GetHandleRequest{HandleId: handle.GetId()}))(t)
	if got.GetUsageCount() != 1 || got.GetContext()["workflow"] != "data-processing" {
		t.Errorf("GetHandle = %v; want usage 1 and the issuance context", got)
	}
}

func TestUnknownTokenIsRefusedAsDataNotAsAnError(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "session"}))(t)
	forged := issued.GetToken()[:len(issued.GetToken())-4] + "AAAA"

	v := must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: forged}))(t).GetValidation()
	if v.GetValid() || v.GetReason() == keyturnv1.ValidationReason_VALIDATION_REASON_UNSPECIFIED {
		t.Errorf("validation of a forged token = %v; want invalid with a reason", v)
	}
}

func TestRotatedHandleKeepsThePreviousTokenDuringGrace(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "api"}))(t)

	rotated := must(c.Handles.RotateHandle(ctx, &keyturnv1.RotateHandleRequest{
		Target: &keyturnv1.RotateHandleRequest_HandleId{HandleId: issued.GetHandle().GetId()},
		Reason: "test rotation",
	}))(t)
	if rotated.GetToken() == "" || rotated.GetToken() == issued.GetToken() || rotated.GetHandle().GetGeneration() != 2 {
		t.Fatalf("RotateHandle = %v", rotated)
	}
	if rotated.GetPreviousValidUntil() == nil {
		t.Error("RotateHandle gave no previous_valid_until")
	}

	current := must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: rotated.GetToken()}))(t).GetValidation()
	if !current.GetValid() || current.GetRotated() {
		t.Errorf("new token: %v; want valid, not rotated", current)
	}
	previous := must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: issued.GetToken()}))(t).GetValidation()
	if !previous.GetValid() || !previous.GetRotated() {
		t.Errorf("previous token in grace: %v; want valid with rotated=true", previous)
	}
}

func TestRemovedHandleNoLongerValidates(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "device"}))(t)

	removed := must(c.Handles.RemoveHandle(ctx, &keyturnv1.RemoveHandleRequest{
		HandleId: issued.GetHandle().GetId(), Reason: "device lost",
	}))(t)
	if removed.GetStatus() != keyturnv1.HandleStatus_HANDLE_STATUS_REVOKED {
		t.Errorf("RemoveHandle status = %v, want REVOKED", removed.GetStatus())
	}

	v := must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: issued.GetToken()}))(t).GetValidation()
	if v.GetValid() {
		t.Errorf("validation after removal = %v; want invalid", v)
	}
}

func TestHandlesAllListsEachHandleOnce(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	want := map[string]bool{}
	for range 3 {
		issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "session"}))(t)
		want[issued.GetHandle().GetId()] = true
	}
	seen := map[string]bool{}
	for handle, err := range c.Handles.All(ctx, &keyturnv1.ListHandlesRequest{Type: "session", PageSize: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		if seen[handle.GetId()] {
			t.Fatalf("handle %s listed twice", handle.GetId())
		}
		seen[handle.GetId()] = true
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("handle %s missing from All", id)
		}
	}
}
