package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

func TestBudgetResetAtTheSecond(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now()
	resetAt := now.Add(1500 * time.Millisecond)
	h := sha256.Sum256([]byte("sk-k1"))
	max := int64(1000)
	k := store.Key{TokenID: "k1", KeyHash: hex.EncodeToString(h[:]), KeyName: "sk-...k1", CreatedAt: now, UpdatedAt: now,
		Spend: 900, ModelSpend: map[string]int64{"m": 900}}
	k.MaxBudget, k.BudgetDuration, k.BudgetResetAt = &max, "2s", &resetAt
	team := store.Team{TeamID: "t1", CreatedAt: now, UpdatedAt: now, Spend: 50}
	team.BudgetDuration, team.BudgetResetAt = "1mo", &resetAt
	if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateTeam(ctx, team); err != nil {
			return err
		}
		return tx.CreateKey(ctx, k)
	}); err != nil {
		t.Fatal(err)
	}
	go runResets(ctx, st, slog.New(slog.NewTextHandler(io.Discard, nil)), 200*time.Millisecond)

	time.Sleep(time.Until(resetAt) - 200*time.Millisecond)
	if got, _ := st.Read().GetKey(ctx, "k1"); got.Spend != 900 {
		t.Fatalf("spend reset early: %d", got.Spend)
	}
	var got store.Key
	for {
		got, err = st.Read().GetKey(ctx, "k1")
		if err != nil {
			t.Fatal(err)
		}
		tm, _ := st.Read().GetTeam(ctx, "t1")
		if (got.Spend == 0 && tm.Spend == 0) || time.Since(resetAt) > time.Second {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got.Spend != 0 || got.ModelSpend != nil || got.BudgetResetAt == nil || !got.BudgetResetAt.Equal(resetAt.Add(2*time.Second)) {
		t.Fatalf("after the reset: spend %d, model spend %v, next %v (want %v)", got.Spend, got.ModelSpend, got.BudgetResetAt, resetAt.Add(2*time.Second))
	}
	tm, _ := st.Read().GetTeam(ctx, "t1")
	if tm.Spend != 0 || tm.BudgetResetAt == nil || !tm.BudgetResetAt.Equal(resetAt.AddDate(0, 1, 0)) {
		t.Fatalf("team after the reset: %d next %v", tm.Spend, tm.BudgetResetAt)
	}
	// The recurring reset, scheduled from the first one, lands on time.
	if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		k, err := tx.GetKey(ctx, "k1")
		if err != nil {
			return err
		}
		k.Spend = 77
		return tx.UpdateKey(ctx, k)
	}); err != nil {
		t.Fatal(err)
	}
	second := resetAt.Add(2 * time.Second)
	time.Sleep(time.Until(second) - 100*time.Millisecond)
	if got, _ := st.Read().GetKey(ctx, "k1"); got.Spend != 77 {
		t.Fatalf("second period reset early: %d", got.Spend)
	}
	// On time: within milliseconds on a quiet machine; the bound leaves
	// room for a loaded CI machine.
	for {
		got, _ := st.Read().GetKey(ctx, "k1")
		if got.Spend == 0 {
			break
		}
		if late := time.Since(second); late > time.Second {
			t.Fatalf("second period not reset %s after budget_reset_at: %d", late, got.Spend)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A newer scan's time for an object replaces the scheduled one (a reset
// moved earlier through the API must not wait for the old time).
func TestMergeDueTakesTheNewerReading(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	sched := []due{{t0.Add(50 * time.Second), store.KindKey, "k1"}, {t0.Add(20 * time.Second), store.KindTeam, "t1"}}
	got := mergeDue(sched, []due{{t0.Add(10 * time.Second), store.KindKey, "k1"}, {t0.Add(30 * time.Second), store.KindUser, "u1"}})
	want := []due{{t0.Add(10 * time.Second), store.KindKey, "k1"}, {t0.Add(20 * time.Second), store.KindTeam, "t1"}, {t0.Add(30 * time.Second), store.KindUser, "u1"}}
	if len(got) != len(want) {
		t.Fatalf("mergeDue = %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].at.Equal(want[i].at) || got[i].kind != want[i].kind || got[i].id != want[i].id {
			t.Fatalf("mergeDue = %v, want %v", got, want)
		}
	}
}
