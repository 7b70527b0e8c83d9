package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// wait bounds every wait for something a backend does asynchronously
// (revision numbering, subscriptions).
const wait = 5 * time.Second

// write runs fn in a transaction and fails the test on error.
func write(t testing.TB, s store.Store, fn func(ctx context.Context, tx store.Tx) error) {
	t.Helper()
	if err := s.ReadWriteTx(context.Background(), fn); err != nil {
		t.Fatalf("ReadWriteTx: %v", err)
	}
}

// waitHead waits until Head reaches want and fails if it went past it.
func waitHead(t testing.TB, s store.Store, want int64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		head, err := s.Head(context.Background())
		if err != nil {
			t.Fatalf("Head: %v", err)
		}
		if head > want {
			t.Fatalf("Head = %d, want %d", head, want)
		}
		if head == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Head stuck at %d for %v, want %d", head, wait, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// changeSet waits for revision rev and returns its change set.
func changeSet(t testing.TB, s store.Store, rev int64) store.ChangeSet {
	t.Helper()
	waitHead(t, s, rev)
	sets, err := s.Changes(context.Background(), rev-1, 1)
	if err != nil {
		t.Fatalf("Changes(%d, 1): %v", rev-1, err)
	}
	if len(sets) != 1 || sets[0].Revision != rev {
		t.Fatalf("Changes(%d, 1) = %s, want revision %d", rev-1, describeSets(sets), rev)
	}
	return sets[0]
}

// allChanges reads the whole log in pages and checks that it holds exactly
// revisions 1..Head, none of them empty.
func allChanges(t testing.TB, s store.Store) []store.ChangeSet {
	t.Helper()
	ctx := context.Background()
	var all []store.ChangeSet
	for {
		after := int64(len(all))
		sets, err := s.Changes(ctx, after, 37)
		if err != nil {
			t.Fatalf("Changes(%d, 37): %v", after, err)
		}
		if len(sets) > 37 {
			t.Fatalf("Changes(%d, 37) returned %d change sets", after, len(sets))
		}
		if len(sets) == 0 {
			break
		}
		for i, cs := range sets {
			if want := after + int64(i) + 1; cs.Revision != want {
				t.Fatalf("Changes(%d, 37)[%d] has revision %d, want %d: the log has a gap or is out of order",
					after, i, cs.Revision, want)
			}
			if len(cs.Changes) == 0 {
				t.Fatalf("revision %d has no changes", cs.Revision)
			}
		}
		all = append(all, sets...)
	}
	head, err := s.Head(ctx)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	if head != int64(len(all)) {
		t.Fatalf("Head = %d but the log holds revisions 1..%d", head, len(all))
	}
	return all
}

// changeIDs lists a change set's changes as sorted "kind/id/op" strings:
// the order of changes inside a set is not part of the contract.
func changeIDs(cs store.ChangeSet) []string {
	ids := make([]string, 0, len(cs.Changes))
	for _, c := range cs.Changes {
		ids = append(ids, c.Kind+"/"+c.ID+"/"+c.Op)
	}
	slices.Sort(ids)
	return ids
}

// expectChanges checks the set's changes, given as "kind/id/op", in any order.
func expectChanges(t testing.TB, cs store.ChangeSet, want ...string) {
	t.Helper()
	got := changeIDs(cs)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("revision %d changes:\n got  %v\n want %v", cs.Revision, got, want)
	}
	for _, c := range cs.Changes {
		switch c.Op {
		case store.OpDelete:
			if len(c.Data) != 0 {
				t.Errorf("revision %d: tombstone %s/%s carries data %s", cs.Revision, c.Kind, c.ID, c.Data)
			}
		case store.OpPut:
			if !json.Valid(c.Data) || bytes.Equal(bytes.TrimSpace(c.Data), []byte("null")) {
				t.Errorf("revision %d: put %s/%s has no post-image: %q", cs.Revision, c.Kind, c.ID, c.Data)
			}
		}
	}
}

// findChange returns the change of kind/id in cs.
func findChange(t testing.TB, cs store.ChangeSet, kind, id string) store.Change {
	t.Helper()
	for _, c := range cs.Changes {
		if c.Kind == kind && c.ID == id {
			return c
		}
	}
	t.Fatalf("revision %d has no change for %s/%s (has %v)", cs.Revision, kind, id, changeIDs(cs))
	return store.Change{}
}

// expectPostImage checks that a put change's data decodes to want.
func expectPostImage[T any](t testing.TB, c store.Change, want T) {
	t.Helper()
	if c.Op != store.OpPut {
		t.Errorf("%s/%s: op %q, want %q", c.Kind, c.ID, c.Op, store.OpPut)
		return
	}
	var got T
	if err := json.Unmarshal(c.Data, &got); err != nil {
		t.Errorf("%s/%s: post-image %s does not decode: %v", c.Kind, c.ID, c.Data, err)
		return
	}
	expectEqual(t, "post-image of "+c.Kind+"/"+c.ID, want, got)
}

func describeSets(sets []store.ChangeSet) string {
	var b strings.Builder
	b.WriteString("[")
	for i, cs := range sets {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%d:%v", cs.Revision, changeIDs(cs))
	}
	b.WriteString("]")
	return b.String()
}

func expectNotFound(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("%s: err = %v, want store.ErrNotFound", what, err)
	}
}

// expectConflict checks err is a *store.ConflictError naming field that
// also matches store.ErrConflict.
func expectConflict(t testing.TB, what string, err error, field string) {
	t.Helper()
	var ce *store.ConflictError
	switch {
	case !errors.As(err, &ce):
		t.Errorf("%s: err = %v, want a *store.ConflictError for %q", what, err, field)
	case ce.Field != field:
		t.Errorf("%s: conflict on %q, want %q", what, ce.Field, field)
	case !errors.Is(err, store.ErrConflict):
		t.Errorf("%s: errors.Is(%v, store.ErrConflict) is false", what, err)
	}
}

// expectEqual compares two values of a store type field by field: times
// with time.Equal at microsecond precision, JSON by meaning (backends may
// re-encode it), nil and empty slices and maps as the same.
func expectEqual[T any](t testing.TB, what string, want, got T) {
	t.Helper()
	var diffs []string
	diff("", reflect.ValueOf(want), reflect.ValueOf(got), &diffs)
	if len(diffs) > 0 {
		t.Errorf("%s differs:\n  %s", what, strings.Join(diffs, "\n  "))
	}
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
)

func diff(path string, want, got reflect.Value, out *[]string) {
	switch want.Type() {
	case timeType:
		w, g := want.Interface().(time.Time), got.Interface().(time.Time)
		if !w.Truncate(time.Microsecond).Equal(g.Truncate(time.Microsecond)) {
			*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, g, w))
		}
		return
	case rawType:
		if !jsonEqual(want.Bytes(), got.Bytes()) {
			*out = append(*out, fmt.Sprintf("%s: got %s, want %s", path, got.Bytes(), want.Bytes()))
		}
		return
	}
	switch want.Kind() {
	case reflect.Pointer:
		if want.IsNil() || got.IsNil() {
			if want.IsNil() != got.IsNil() {
				*out = append(*out, fmt.Sprintf("%s: got %s, want %s", path, show(got), show(want)))
			}
			return
		}
		diff(path, want.Elem(), got.Elem(), out)
	case reflect.Struct:
		for i := range want.NumField() {
			if f := want.Type().Field(i); f.IsExported() {
				diff(path+"."+f.Name, want.Field(i), got.Field(i), out)
			}
		}
	case reflect.Slice:
		if want.Len() != got.Len() {
			*out = append(*out, fmt.Sprintf("%s: got %d elements %v, want %d %v",
				path, got.Len(), got.Interface(), want.Len(), want.Interface()))
			return
		}
		for i := range want.Len() {
			diff(fmt.Sprintf("%s[%d]", path, i), want.Index(i), got.Index(i), out)
		}
	case reflect.Map:
		if want.Len() != got.Len() {
			*out = append(*out, fmt.Sprintf("%s: got %v, want %v", path, got.Interface(), want.Interface()))
			return
		}
		for _, k := range want.MapKeys() {
			g := got.MapIndex(k)
			if !g.IsValid() {
				*out = append(*out, fmt.Sprintf("%s: missing [%v]", path, k))
				continue
			}
			diff(fmt.Sprintf("%s[%v]", path, k), want.MapIndex(k), g, out)
		}
	default:
		if !reflect.DeepEqual(want.Interface(), got.Interface()) {
			*out = append(*out, fmt.Sprintf("%s: got %#v, want %#v", path, got.Interface(), want.Interface()))
		}
	}
}

func show(v reflect.Value) string {
	if v.IsNil() {
		return "nil"
	}
	return fmt.Sprintf("&%v", v.Elem().Interface())
}

// jsonEqual compares JSON documents by meaning; absent, empty and null are
// the same.
func jsonEqual(a, b []byte) bool {
	empty := func(d []byte) bool {
		d = bytes.TrimSpace(d)
		return len(d) == 0 || bytes.Equal(d, []byte("null"))
	}
	if empty(a) || empty(b) {
		return empty(a) && empty(b)
	}
	va, errA := decodeJSON(a)
	vb, errB := decodeJSON(b)
	return errA == nil && errB == nil && reflect.DeepEqual(va, vb)
}

func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber() // exact integers; number spellings are compared as written
	var v any
	err := d.Decode(&v)
	return v, err
}

// ids lists the ids of a page of entities, in order.
func ids[T any](items []T, id func(T) string) []string {
	out := make([]string, len(items))
	for i, v := range items {
		out[i] = id(v)
	}
	return out
}

func keyID(k store.Key) string          { return k.TokenID }
func teamID(t store.Team) string        { return t.TeamID }
func userID(u store.User) string        { return u.UserID }
func orgID(o store.Organization) string { return o.OrganizationID }
func modelID(m store.Model) string      { return m.ID }
func auditID(e store.AuditEntry) string { return e.ID }
