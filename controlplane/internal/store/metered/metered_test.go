package metered

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

func TestMeteredCountsLatencyAndOnlyRealErrors(t *testing.T) {
	raw, err := embedded.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	reg := prometheus.NewRegistry()
	st := Wrap(raw, reg)
	ctx := context.Background()
	if _, err := st.Read().GetKey(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetKey: %v", err)
	}
	boom := errors.New("boom")
	if err := st.ReadWriteTx(ctx, func(context.Context, store.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("tx: %v", err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "tollgate_cp_store_seconds"); n != 3 {
		t.Fatalf("%d latency series, want get_key, tx, ping", n)
	}
	want := `
# HELP tollgate_cp_store_errors_total Store calls that failed, by operation (not found, conflicts and cancellations excluded).
# TYPE tollgate_cp_store_errors_total counter
tollgate_cp_store_errors_total{op="tx"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tollgate_cp_store_errors_total"); err != nil {
		t.Fatal(err)
	}
}
