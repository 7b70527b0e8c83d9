package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var crudTests = []test{
	{"Key", testCRUDKey},
	{"Team", testCRUDTeam},
	{"User", testCRUDUser},
	{"Organization", testCRUDOrganization},
	{"Model", testCRUDModel},
	{"MissingObjects", testMissingObjects},
	{"Ping", testPing},
}

// entity adapts one entity type's methods for the generic CRUD test.
type entity[T any] struct {
	get    func(ctx context.Context, r store.Reader, id string) (T, error)
	create func(ctx context.Context, tx store.Tx, v T) error
	update func(ctx context.Context, tx store.Tx, v T) error
	del    func(ctx context.Context, tx store.Tx, id string) error
}

var (
	keyEntity = entity[store.Key]{
		get:    func(ctx context.Context, r store.Reader, id string) (store.Key, error) { return r.GetKey(ctx, id) },
		create: func(ctx context.Context, tx store.Tx, v store.Key) error { return tx.CreateKey(ctx, v) },
		update: func(ctx context.Context, tx store.Tx, v store.Key) error { return tx.UpdateKey(ctx, v) },
		del:    func(ctx context.Context, tx store.Tx, id string) error { return tx.DeleteKey(ctx, id) },
	}
	teamEntity = entity[store.Team]{
		get:    func(ctx context.Context, r store.Reader, id string) (store.Team, error) { return r.GetTeam(ctx, id) },
		create: func(ctx context.Context, tx store.Tx, v store.Team) error { return tx.CreateTeam(ctx, v) },
		update: func(ctx context.Context, tx store.Tx, v store.Team) error { return tx.UpdateTeam(ctx, v) },
		del:    func(ctx context.Context, tx store.Tx, id string) error { return tx.DeleteTeam(ctx, id) },
	}
	userEntity = entity[store.User]{
		get:    func(ctx context.Context, r store.Reader, id string) (store.User, error) { return r.GetUser(ctx, id) },
		create: func(ctx context.Context, tx store.Tx, v store.User) error { return tx.CreateUser(ctx, v) },
		update: func(ctx context.Context, tx store.Tx, v store.User) error { return tx.UpdateUser(ctx, v) },
		del:    func(ctx context.Context, tx store.Tx, id string) error { return tx.DeleteUser(ctx, id) },
	}
	orgEntity = entity[store.Organization]{
		get: func(ctx context.Context, r store.Reader, id string) (store.Organization, error) {
			return r.GetOrganization(ctx, id)
		},
		create: func(ctx context.Context, tx store.Tx, v store.Organization) error {
			return tx.CreateOrganization(ctx, v)
		},
		update: func(ctx context.Context, tx store.Tx, v store.Organization) error {
			return tx.UpdateOrganization(ctx, v)
		},
		del: func(ctx context.Context, tx store.Tx, id string) error { return tx.DeleteOrganization(ctx, id) },
	}
	modelEntity = entity[store.Model]{
		get:    func(ctx context.Context, r store.Reader, id string) (store.Model, error) { return r.GetModel(ctx, id) },
		create: func(ctx context.Context, tx store.Tx, v store.Model) error { return tx.CreateModel(ctx, v) },
		update: func(ctx context.Context, tx store.Tx, v store.Model) error { return tx.UpdateModel(ctx, v) },
		del:    func(ctx context.Context, tx store.Tx, id string) error { return tx.DeleteModel(ctx, id) },
	}
)

// testCRUD walks one object through its life: missing, created (visible in
// its own transaction and after commit), replaced by an update that also
// clears fields, deleted, and created again under the same id.
func testCRUD[T any](t *testing.T, s store.Store, e entity[T], id string, v1, v2 T) {
	ctx := t.Context()
	_, err := e.get(ctx, s.Read(), id)
	expectNotFound(t, "get before create", err)
	expectNotFound(t, "update before create", s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return e.update(ctx, tx, v1)
	}))
	expectNotFound(t, "delete before create", s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return e.del(ctx, tx, id)
	}))

	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := e.create(ctx, tx, v1); err != nil {
			return err
		}
		got, err := e.get(ctx, tx, id)
		if err != nil {
			t.Errorf("get in the creating transaction: %v", err)
			return nil
		}
		expectEqual(t, "read in the creating transaction", v1, got)
		return nil
	})
	got, err := e.get(ctx, s.Read(), id)
	if err != nil {
		t.Fatalf("get after create: %v", err)
	}
	expectEqual(t, "after create", v1, got)

	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := e.update(ctx, tx, v2); err != nil {
			return err
		}
		got, err := e.get(ctx, tx, id)
		if err != nil {
			t.Errorf("get in the updating transaction: %v", err)
			return nil
		}
		expectEqual(t, "read in the updating transaction", v2, got)
		return nil
	})
	got, err = e.get(ctx, s.Read(), id)
	if err != nil {
		t.Fatalf("get after update: %v", err)
	}
	expectEqual(t, "after update (an update replaces the whole object)", v2, got)

	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := e.del(ctx, tx, id); err != nil {
			return err
		}
		_, err := e.get(ctx, tx, id)
		expectNotFound(t, "get in the deleting transaction", err)
		return nil
	})
	_, err = e.get(ctx, s.Read(), id)
	expectNotFound(t, "get after delete", err)
	expectNotFound(t, "delete twice", s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return e.del(ctx, tx, id)
	}))
	expectNotFound(t, "update after delete", s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return e.update(ctx, tx, v2)
	}))

	// The id (and every unique field of v1) is free again.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return e.create(ctx, tx, v1) })
	got, err = e.get(ctx, s.Read(), id)
	if err != nil {
		t.Fatalf("get after re-create: %v", err)
	}
	expectEqual(t, "after re-create", v1, got)
}

func testCRUDKey(t *testing.T, s store.Store) {
	v1 := fullKey("k1")
	v2 := newKey("k1", t0) // every optional field cleared
	v2.KeyHash, v2.KeyName = hashOf("sk-rotated"), "sk-...ated"
	v2.KeyAlias = "renamed"
	v2.Metadata = json.RawMessage(`{"only":"this"}`)
	v2.UpdatedAt = t0.Add(time.Hour)
	testCRUD(t, s, keyEntity, "k1", v1, v2)
}

func testCRUDTeam(t *testing.T, s store.Store) {
	v1 := fullTeam("t1")
	v2 := newTeam("t1", t0)
	v2.Members = []store.TeamMember{{UserID: "dave", Role: store.TeamRoleUser}}
	v2.Spend = 5
	testCRUD(t, s, teamEntity, "t1", v1, v2)
}

func testCRUDUser(t *testing.T, s store.Store) {
	v1 := fullUser("u1")
	v2 := newUser("u1", t0)
	v2.UserRole = store.RoleInternalUserViewer
	testCRUD(t, s, userEntity, "u1", v1, v2)
}

func testCRUDOrganization(t *testing.T, s store.Store) {
	v1 := fullOrg("o1")
	v2 := newOrg("o1", t0)
	v2.OrganizationAlias = "renamed"
	testCRUD(t, s, orgEntity, "o1", v1, v2)
}

func testCRUDModel(t *testing.T, s store.Store) {
	v1 := fullModel("m1")
	v2 := newModel("m1", "gpt-4o-mini")
	testCRUD(t, s, modelEntity, "m1", v1, v2)
}

// testMissingObjects: every Get, Update and Delete of an object that does
// not exist is ErrNotFound, through Read, inside a transaction, and as the
// error ReadWriteTx returns.
func testMissingObjects(t *testing.T, s store.Store) {
	ctx := t.Context()
	reads := func(r store.Reader) map[string]error {
		_, errKey := r.GetKey(ctx, "nope")
		_, errHash := r.GetKeyByHash(ctx, hashOf("nope"))
		_, errAlias := r.GetKeyByAlias(ctx, "nope")
		_, errEmptyAlias := r.GetKeyByAlias(ctx, "")
		_, errTeam := r.GetTeam(ctx, "nope")
		_, errUser := r.GetUser(ctx, "nope")
		_, errOrg := r.GetOrganization(ctx, "nope")
		_, errModel := r.GetModel(ctx, "nope")
		return map[string]error{
			"GetKey": errKey, "GetKeyByHash": errHash, "GetKeyByAlias": errAlias,
			`GetKeyByAlias("")`: errEmptyAlias, "GetTeam": errTeam, "GetUser": errUser,
			"GetOrganization": errOrg, "GetModel": errModel,
		}
	}
	// A store with objects in it, so a backend that returns "the first
	// object" for a miss is caught.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, newKey("k", t0)), tx.CreateTeam(ctx, newTeam("t", t0)),
			tx.CreateUser(ctx, newUser("u", t0)), tx.CreateOrganization(ctx, newOrg("o", t0)),
			tx.CreateModel(ctx, newModel("m", "gpt")))
	})
	for name, err := range reads(s.Read()) {
		expectNotFound(t, "Read()."+name, err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for name, err := range reads(tx) {
			expectNotFound(t, "in a transaction: "+name, err)
		}
		return nil
	})

	writes := map[string]func(ctx context.Context, tx store.Tx) error{
		"UpdateKey":          func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, newKey("nope", t0)) },
		"DeleteKey":          func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "nope") },
		"UpdateTeam":         func(ctx context.Context, tx store.Tx) error { return tx.UpdateTeam(ctx, newTeam("nope", t0)) },
		"DeleteTeam":         func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "nope") },
		"UpdateUser":         func(ctx context.Context, tx store.Tx) error { return tx.UpdateUser(ctx, newUser("nope", t0)) },
		"DeleteUser":         func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "nope") },
		"UpdateOrganization": func(ctx context.Context, tx store.Tx) error { return tx.UpdateOrganization(ctx, newOrg("nope", t0)) },
		"DeleteOrganization": func(ctx context.Context, tx store.Tx) error { return tx.DeleteOrganization(ctx, "nope") },
		"UpdateModel":        func(ctx context.Context, tx store.Tx) error { return tx.UpdateModel(ctx, newModel("nope", "gpt")) },
		"DeleteModel":        func(ctx context.Context, tx store.Tx) error { return tx.DeleteModel(ctx, "nope") },
	}
	for name, w := range writes {
		expectNotFound(t, name, s.ReadWriteTx(ctx, w))
	}
	// A failed update of a missing object is a write that did not happen:
	// the existing objects are untouched and no revision was added.
	waitHead(t, s, 1)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "k") })
	expectChanges(t, changeSet(t, s, 2), "key/k/delete")
}

func testPing(t *testing.T, s store.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}
