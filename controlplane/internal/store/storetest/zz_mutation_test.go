package storetest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var mut = os.Getenv("MUT")

type mstore struct{ store.Store }

func (s mstore) Read() store.Reader { return mreader{s.Store.Read()} }

type mreader struct{ store.Reader }

func (r mreader) GetKey(ctx context.Context, id string) (store.Key, error) {
	k, err := r.Reader.GetKey(ctx, id)
	if mut == "notfound" && err != nil {
		err = fmt.Errorf("%v", err)
	}
	return k, err
}
func (r mreader) ListKeys(ctx context.Context, f store.KeyFilter) ([]store.Key, int, error) {
	if mut == "teamfilter" {
		f.TeamID = ""
	}
	return r.Reader.ListKeys(ctx, f)
}
func (r mreader) GetKeyByHash(ctx context.Context, h string) (store.Key, error) {
	k, err := r.Reader.GetKeyByHash(ctx, h)
	if mut == "prevhash" && errors.Is(err, store.ErrNotFound) {
		err2 := r.Reader.EachKey(ctx, func(kk store.Key) error {
			for _, p := range kk.PreviousHashes {
				if p.KeyHash == h {
					k, err = kk, nil
				}
			}
			return nil
		})
		_ = err2
	}
	return k, err
}
func (r mreader) GetSettings(ctx context.Context) (store.Settings, error) {
	st, err := r.Reader.GetSettings(ctx)
	if mut == "settings" && len(st.GeneralSettings) == 0 {
		return st, store.ErrNotFound
	}
	return st, err
}

type mtx struct{ store.Tx }

func (t mtx) DeleteTeam(ctx context.Context, id string) error {
	if mut != "teamsa" {
		return t.Tx.DeleteTeam(ctx, id)
	}
	keys, _, _ := t.Tx.ListKeys(ctx, store.KeyFilter{TeamID: id, Page: store.Page{Size: 100}})
	if err := t.Tx.DeleteTeam(ctx, id); err != nil {
		return err
	}
	for _, k := range keys {
		if k.ServiceAccount {
			if err := t.Tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
	}
	return nil
}
func (t mtx) DeleteUser(ctx context.Context, id string) error {
	if mut == "usersa" {
		var del []string
		t.Tx.EachKey(ctx, func(k store.Key) error {
			if k.ServiceAccount && k.CreatedBy == id {
				del = append(del, k.TokenID)
			}
			return nil
		})
		for _, d := range del {
			t.Tx.DeleteKey(ctx, d)
		}
	}
	return t.Tx.DeleteUser(ctx, id)
}
func (t mtx) UpdateKey(ctx context.Context, k store.Key) error {
	if mut == "merge" {
		old, err := t.Tx.GetKey(ctx, k.TokenID)
		if err == nil && k.MaxBudget == nil {
			k.MaxBudget = old.MaxBudget
		}
	}
	return t.Tx.UpdateKey(ctx, k)
}

func (s mstore) ReadWriteTx(ctx context.Context, fn func(ctx context.Context, tx store.Tx) error) error {
	err := s.Store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return fn(ctx, mtx{tx}) })
	if mut == "txerr" && err != nil {
		return errors.New("tx failed")
	}
	return err
}
func (s mstore) Snapshot(ctx context.Context, fn func(int64, store.Reader) error) error {
	return s.Store.Snapshot(ctx, func(rev int64, r store.Reader) error {
		if mut == "snaprev" {
			rev, _ = s.Store.Head(ctx)
			rev += 0
		}
		if mut == "snaplow" && rev > 0 {
			rev--
		}
		return fn(rev, r)
	})
}
func (s mstore) Changes(ctx context.Context, after int64, limit int) ([]store.ChangeSet, error) {
	sets, err := s.Store.Changes(ctx, after, limit)
	if mut == "changeslimit" {
		more, _ := s.Store.Changes(ctx, after, limit+1)
		return more, err
	}
	if mut == "dropchange" {
		for i := range sets {
			if len(sets[i].Changes) > 2 {
				sets[i].Changes = sets[i].Changes[:len(sets[i].Changes)-1]
			}
		}
	}
	return sets, err
}
func (s mstore) Subscribe(ctx context.Context) <-chan struct{} {
	if mut == "subscribe" {
		return make(chan struct{})
	}
	return s.Store.Subscribe(ctx)
}

func TestMutants(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return mstore{pgtest.NewStore(t)} })
}
