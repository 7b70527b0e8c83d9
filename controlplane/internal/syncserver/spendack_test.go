package syncserver

import (
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// An ack names, once each, the objects its batch touched, with their spend
// after the group's transaction; objects of other batches are left out.
func TestAckCarriesSpendOfTouchedObjects(t *testing.T) {
	after := map[objectRef]int64{
		{store.KindKey, "k1"}: 70, {store.KindTeam, "t1"}: 90, {store.KindUser, "u1"}: 50,
		{store.KindKey, "other"}: 5,
	}
	b := store.SpendBatch{Records: []store.SpendRecord{
		{Seq: 1, TokenID: "k1", TeamID: "t1", UserID: "u1"},
		{Seq: 2, TokenID: "k1", TeamID: "t1", OrganizationID: "gone"},
	}}
	ack := &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_SpendAck{SpendAck: &syncv1.SpendAck{OutboxId: "ob", LastSeq: 2}}}
	got := map[string]int64{}
	for _, s := range withSpends(ack, b, after).GetSpendAck().GetSpends() {
		if _, dup := got[s.GetKind()+":"+s.GetId()]; dup {
			t.Fatalf("%s:%s named twice", s.GetKind(), s.GetId())
		}
		got[s.GetKind()+":"+s.GetId()] = s.GetSpend()
	}
	want := map[string]int64{"key:k1": 70, "team:t1": 90, "user:u1": 50}
	if len(got) != len(want) {
		t.Fatalf("spends = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("spends = %v, want %v", got, want)
		}
	}
}
