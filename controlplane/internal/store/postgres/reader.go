package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// querier is what reads and writes need: the pool, or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// reader implements store.Reader on a querier. fail classifies errors; in a
// read-write transaction it also remembers that the transaction failed.
type reader struct {
	q    querier
	fail func(context.Context, error) error
	// snap is set on Snapshot's reader (q is then snap): Each* read
	// through a cursor instead of paging by id (eachCursor), and
	// EachKeyDocs through one streamed query (eachStream).
	snap    *serialQuerier
	cursors int // cursors declared on snap, for unique names
}

// serialQuerier runs one statement at a time on a transaction's connection,
// so that a snapshot's Each* can fetch its next page while fn runs, and fn
// may still use the reader (its statement waits for the fetch). A Query
// holds the connection until its rows are closed, a QueryRow until Scan:
// every caller here scans and closes at once.
//
// While EachKeyDocs streams (eachStream), the connection is its query's:
// a statement then fails with errStreaming instead of waiting for a
// stream that waits for the caller.
type serialQuerier struct {
	mu        sync.Mutex
	q         querier
	streaming atomic.Bool
}

// errStreaming is what the snapshot's reader answers while EachKeyDocs
// streams (its fn must not use the reader).
var errStreaming = errors.New("postgres: the snapshot's reader is in use by EachKeyDocs (its fn must not use the reader)")

// errRow is a pgx.Row that fails with err.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (s *serialQuerier) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if s.streaming.Load() {
		return pgconn.CommandTag{}, errStreaming
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.q.Exec(ctx, sql, args...)
}

func (s *serialQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if s.streaming.Load() {
		return nil, errStreaming
	}
	s.mu.Lock()
	rows, err := s.q.Query(ctx, sql, args...)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return &unlockRows{Rows: rows, mu: &s.mu}, nil
}

func (s *serialQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if s.streaming.Load() {
		return errRow{errStreaming}
	}
	s.mu.Lock()
	return unlockRow{row: s.q.QueryRow(ctx, sql, args...), mu: &s.mu}
}

type unlockRows struct {
	pgx.Rows
	mu   *sync.Mutex
	done bool
}

// Next releases the connection when the rows are exhausted, as pgx closes
// them then (callers may rely on that and not call Close).
func (r *unlockRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.release()
	return false
}

func (r *unlockRows) Close() {
	r.Rows.Close()
	r.release()
}

func (r *unlockRows) release() {
	if !r.done {
		r.done = true
		r.mu.Unlock()
	}
}

type unlockRow struct {
	row pgx.Row
	mu  *sync.Mutex
}

func (r unlockRow) Scan(dest ...any) error {
	defer r.mu.Unlock()
	return r.row.Scan(dest...)
}

var _ store.Reader = (*reader)(nil)

// table describes an entity table for the generic helpers. Every string is
// a constant of this package: nothing from a caller is ever spliced into SQL.
type table struct {
	name  string // table name
	kind  string // store.Kind*, for error messages
	id    string // primary key column
	order string // creation order
}

var (
	keysTable  = table{name: "keys", kind: store.KindKey, id: "token_id", order: "created_at, created_ns, token_id"}
	teamsTable = table{name: "teams", kind: store.KindTeam, id: "team_id", order: "created_at, created_ns, team_id"}
	usersTable = table{name: "users", kind: store.KindUser, id: "user_id", order: "created_at, created_ns, user_id"}
	orgsTable  = table{name: "organizations", kind: store.KindOrganization, id: "organization_id",
		order: "created_at, created_ns, organization_id"}
	auditTable = table{name: "audit", kind: "audit", id: "id",
		order: "created_at DESC, created_ns DESC, seq DESC"}
)

// eachPage is how many rows Each* reads per round trip: large enough that
// a million keys take ~1000 queries, small enough to bound memory.
const eachPage = 1000

// fetchPage is how many rows a snapshot's Each* fetches from its cursor at a
// time (a few MiB of documents); two pages are in memory at once.
const fetchPage = 5000

func (r *reader) GetKey(ctx context.Context, tokenID string) (store.Key, error) {
	return get[store.Key](ctx, r, keysTable, "SELECT doc FROM keys WHERE token_id = $1", tokenID)
}

func (r *reader) GetKeyByHash(ctx context.Context, keyHash string) (store.Key, error) {
	return get[store.Key](ctx, r, keysTable, "SELECT doc FROM keys WHERE key_hash = $1", keyHash)
}

func (r *reader) GetKeyByAlias(ctx context.Context, alias string) (store.Key, error) {
	if alias == "" {
		return store.Key{}, store.ErrNotFound
	}
	return get[store.Key](ctx, r, keysTable, "SELECT doc FROM keys WHERE key_alias = $1", alias)
}

func (r *reader) ListKeys(ctx context.Context, f store.KeyFilter) ([]store.Key, int, error) {
	var w where
	w.eq("user_id", f.UserID)
	w.eq("team_id", f.TeamID)
	w.eq("organization_id", f.OrganizationID)
	w.eq("key_alias", f.KeyAlias)
	return list[store.Key](ctx, r, keysTable, &w, f.Page)
}

func (r *reader) GetTeam(ctx context.Context, teamID string) (store.Team, error) {
	return get[store.Team](ctx, r, teamsTable, "SELECT doc FROM teams WHERE team_id = $1", teamID)
}

func (r *reader) ListTeams(ctx context.Context, f store.TeamFilter) ([]store.Team, int, error) {
	var w where
	w.eq("organization_id", f.OrganizationID)
	if f.UserID != "" {
		w.add("EXISTS (SELECT 1 FROM team_members m WHERE m.team_id = teams.team_id AND m.user_id = ?)", f.UserID)
	}
	return list[store.Team](ctx, r, teamsTable, &w, f.Page)
}

func (r *reader) GetUser(ctx context.Context, userID string) (store.User, error) {
	return get[store.User](ctx, r, usersTable, "SELECT doc FROM users WHERE user_id = $1", userID)
}

func (r *reader) ListUsers(ctx context.Context, f store.UserFilter) ([]store.User, int, error) {
	var w where
	w.eq("user_role", f.UserRole)
	// No index: looking users up by email is a rare admin call (members
	// added by user_email).
	w.eq("doc->>'user_email'", f.UserEmail)
	if f.TeamID != "" {
		w.add("EXISTS (SELECT 1 FROM team_members m WHERE m.user_id = users.user_id AND m.team_id = ?)", f.TeamID)
	}
	return list[store.User](ctx, r, usersTable, &w, f.Page)
}

func (r *reader) GetOrganization(ctx context.Context, orgID string) (store.Organization, error) {
	return get[store.Organization](ctx, r, orgsTable, "SELECT doc FROM organizations WHERE organization_id = $1", orgID)
}

func (r *reader) ListOrganizations(ctx context.Context, p store.Page) ([]store.Organization, int, error) {
	return list[store.Organization](ctx, r, orgsTable, &where{}, p)
}

func (r *reader) GetModel(ctx context.Context, id string) (store.Model, error) {
	return get[store.Model](ctx, r, table{kind: store.KindModel}, "SELECT doc FROM models WHERE id = $1", id)
}

func (r *reader) ListModels(ctx context.Context) ([]store.Model, error) {
	rows, err := r.q.Query(ctx, "SELECT doc FROM models ORDER BY model_name, id")
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return collect[store.Model](ctx, r, table{kind: store.KindModel}, rows)
}

func (r *reader) GetSettings(ctx context.Context) (store.Settings, error) {
	s, err := get[store.Settings](ctx, r, table{kind: store.KindSettings}, "SELECT doc FROM settings")
	if errors.Is(err, store.ErrNotFound) {
		return store.Settings{}, nil
	}
	return s, err
}

// KeysHint is the planner's estimate of the number of keys (pg_class,
// kept by ANALYZE; free to read), 0 when there is none. The snapshot
// builder sends it to the proxies as a sizing hint.
func (r *reader) KeysHint(ctx context.Context) int {
	var n float64
	if err := r.q.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = 'keys'::regclass").Scan(&n); err != nil || n < 1 {
		return 0
	}
	return int(min(n, 1<<31))
}

func (r *reader) EachKey(ctx context.Context, fn func(store.Key) error) error {
	return each(ctx, r, keysTable, fn)
}

func (r *reader) EachTeam(ctx context.Context, fn func(store.Team) error) error {
	return each(ctx, r, teamsTable, fn)
}

func (r *reader) EachUser(ctx context.Context, fn func(store.User) error) error {
	return each(ctx, r, usersTable, fn)
}

func (r *reader) EachOrganization(ctx context.Context, fn func(store.Organization) error) error {
	return each(ctx, r, orgsTable, fn)
}

// ListAudit returns entries newest first. Since is inclusive and Until
// exclusive, so consecutive windows never return an entry twice.
func (r *reader) ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, int, error) {
	var w where
	w.eq("object_type", f.ObjectType)
	w.eq("object_id", f.ObjectID)
	w.eq("caller", f.Caller)
	if !f.Since.IsZero() {
		w.add2("(created_at, created_ns) >= (?, ?)", f.Since, nanos(f.Since))
	}
	if !f.Until.IsZero() {
		w.add2("(created_at, created_ns) < (?, ?)", f.Until, nanos(f.Until))
	}
	return list[store.AuditEntry](ctx, r, auditTable, &w, f.Page)
}

// get reads one doc and decodes it.
func get[T any](ctx context.Context, r *reader, t table, sql string, args ...any) (T, error) {
	var v T
	var doc []byte
	if err := r.q.QueryRow(ctx, sql, args...).Scan(&doc); err != nil {
		return v, r.fail(ctx, err)
	}
	if err := store.DecodeJSON(doc, &v); err != nil {
		return v, fmt.Errorf("postgres: decode %s: %w", t.kind, err)
	}
	return v, nil
}

// list returns one page of t matching w, and the number of matches.
func list[T any](ctx context.Context, r *reader, t table, w *where, p store.Page) ([]T, int, error) {
	p = p.Normalize()
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM "+t.name+w.sql(), w.args...).Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	if total == 0 || p.Offset() >= total {
		return []T{}, total, nil
	}
	args := append(w.args, p.Size, p.Offset())
	n := len(w.args)
	rows, err := r.q.Query(ctx, "SELECT doc FROM "+t.name+w.sql()+" ORDER BY "+t.order+
		" LIMIT $"+strconv.Itoa(n+1)+" OFFSET $"+strconv.Itoa(n+2), args...)
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	items, err := collect[T](ctx, r, t, rows)
	if err != nil {
		return nil, 0, err
	}
	return items, total, nil
}

// collect decodes every doc of rows.
func collect[T any](ctx context.Context, r *reader, t table, rows pgx.Rows) ([]T, error) {
	defer rows.Close()
	items := []T{}
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, r.fail(ctx, err)
		}
		var v T
		if err := store.DecodeJSON(doc, &v); err != nil {
			return nil, fmt.Errorf("postgres: decode %s: %w", t.kind, err)
		}
		items = append(items, v)
	}
	if err := rows.Err(); err != nil {
		return nil, r.fail(ctx, err)
	}
	return items, nil
}

// each calls fn for every row of t, decoded (eachRows).
func each[T any](ctx context.Context, r *reader, t table, fn func(T) error) error {
	var items []T
	return eachRows(ctx, r, docScan(t), func(page []row) error {
		if cap(items) < len(page) {
			items = make([]T, len(page))
		}
		items = items[:len(page)]
		if err := decodeRows(t, page, items); err != nil {
			return err
		}
		for i := range items {
			if err := fn(items[i]); err != nil {
				return err
			}
			var zero T
			items[i] = zero // let the GC have what fn did not keep
		}
		return nil
	})
}

// EachKeyDocs reads each key's document without the fields a data plane
// never needs (store.KeyDocOmits), and takes the largest strings
// (token_id, key_hash, user_id, team_id) from their columns instead of the
// document: rendering jsonb as text is most of what a snapshot costs
// Postgres, and each byte left out is one the control plane does not read
// either. The columns are written from the same Key as the document
// (tx.go), NULL for an empty owner; readKeyDocs splices them back in.
func (r *reader) EachKeyDocs(ctx context.Context, fn func(docs [][]byte) error) error {
	var docs [][]byte
	return eachRows(ctx, r, keyDocsScan, func(page []row) error {
		docs = docs[:0]
		for _, rw := range page {
			docs = append(docs, rw.doc)
		}
		return fn(docs)
	})
}

// keyDocsScan's select list. Constants only.
var keyDocsScan = scan{
	t: keysTable,
	cols: "token_id, key_hash, user_id, team_id, doc - '{token_id,key_hash,user_id,team_id," +
		strings.Join(store.KeyDocOmits, ",") + "}'::text[]",
	read:   (*rowPage).readKeyDocs,
	stream: true,
}

// scan is what eachRows reads: columns of a table, and how a page of
// them becomes rows.
type scan struct {
	t    table
	cols string // select list, id first; constants of this package only
	read func(*rowPage, pgx.Rows) error
	// stream: in a snapshot, read through one query (eachStream), fn not
	// using the reader meanwhile; else through a cursor (eachCursor).
	stream bool
}

// docScan reads id and doc of t.
func docScan(t table) scan { return scan{t: t, cols: t.id + ", doc", read: (*rowPage).read} }

// eachRows calls fn with every row of t, a page at a time (never an empty
// page). A snapshot's reader goes through eachCursor; other readers page
// by primary key (keyset pagination), eachPage rows per query. Either way
// a page is read completely before fn runs, so fn may use the same reader
// (one connection cannot run two queries at once). Inside a transaction
// every page sees the same snapshot; on the pool, rows written during the
// iteration may or may not be seen. The rows are valid until fn returns.
func eachRows(ctx context.Context, r *reader, sc scan, fn func([]row) error) error {
	if r.snap != nil {
		if sc.stream {
			return eachStream(ctx, r, sc, fn)
		}
		return eachCursor(ctx, r, sc, fn)
	}
	t := sc.t
	var after string
	first := true
	var page rowPage
	for {
		var rows pgx.Rows
		var err error
		if first {
			rows, err = r.q.Query(ctx, "SELECT "+sc.cols+" FROM "+t.name+" ORDER BY "+t.id+" LIMIT $1", eachPage)
		} else {
			rows, err = r.q.Query(ctx, "SELECT "+sc.cols+" FROM "+t.name+" WHERE "+t.id+" > $1 ORDER BY "+t.id+" LIMIT $2",
				after, eachPage)
		}
		if err != nil {
			return r.fail(ctx, err)
		}
		if err := sc.read(&page, rows); err != nil {
			return r.fail(ctx, err)
		}
		if len(page.rows) > 0 {
			if err := fn(page.rows); err != nil {
				return err
			}
		}
		if len(page.rows) < eachPage {
			return nil
		}
		first = false
		after = string(page.rows[len(page.rows)-1].id)
	}
}

// row is an entity row as read: its id and JSON document.
type row struct{ id, doc []byte }

// rowPage is a page of rows; their bytes live in arena.
type rowPage struct {
	rows  []row
	arena []byte
}

// read replaces p's rows by every row of rows (and closes rows). The rows'
// bytes are copied into p's arena: two allocations per page, not per row.
func (p *rowPage) read(rows pgx.Rows) error {
	defer rows.Close()
	p.rows, p.arena = p.rows[:0], p.arena[:0]
	type span struct{ id, idEnd, doc, docEnd int }
	var spans []span
	fd := rows.FieldDescriptions()
	if len(fd) != 2 || fd[0].Format != pgx.TextFormatCode && fd[0].DataTypeOID != pgtype.TextOID {
		return errors.New("postgres: each: unexpected columns")
	}
	// jsonb in binary format is a version byte (1) and the text.
	jsonbBinary := fd[1].Format == pgx.BinaryFormatCode && fd[1].DataTypeOID == pgtype.JSONBOID
	for rows.Next() {
		v := rows.RawValues()
		if len(v) != 2 || v[0] == nil || v[1] == nil {
			return errors.New("postgres: each: unexpected NULL")
		}
		doc := v[1]
		if jsonbBinary {
			if len(doc) == 0 || doc[0] != 1 {
				return errors.New("postgres: each: unknown jsonb binary format version")
			}
			doc = doc[1:]
		}
		sp := span{id: len(p.arena)}
		p.arena = append(p.arena, v[0]...)
		sp.idEnd, sp.doc = len(p.arena), len(p.arena)
		p.arena = append(p.arena, doc...)
		sp.docEnd = len(p.arena)
		spans = append(spans, sp)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	// Slices are taken once the arena stopped growing.
	for _, sp := range spans {
		p.rows = append(p.rows, row{id: p.arena[sp.id:sp.idEnd], doc: p.arena[sp.doc:sp.docEnd]})
	}
	return nil
}

// readKeyDocs is read for keyDocsScan's columns (token_id, key_hash,
// user_id, team_id, the rest of doc): each row's doc is the rest with the
// four columns spliced back in as its first members.
func (p *rowPage) readKeyDocs(rows pgx.Rows) error {
	defer rows.Close()
	p.rows, p.arena = p.rows[:0], p.arena[:0]
	type span struct{ id, idEnd, doc, docEnd int }
	var spans []span
	fd := rows.FieldDescriptions()
	if len(fd) != 5 {
		return errors.New("postgres: each: unexpected columns")
	}
	for i := range 4 {
		if fd[i].Format != pgx.TextFormatCode && fd[i].DataTypeOID != pgtype.TextOID {
			return errors.New("postgres: each: unexpected columns")
		}
	}
	jsonbBinary := fd[4].Format == pgx.BinaryFormatCode && fd[4].DataTypeOID == pgtype.JSONBOID
	for rows.Next() {
		v := rows.RawValues()
		if len(v) != 5 || v[0] == nil || v[1] == nil || v[4] == nil {
			return errors.New("postgres: each: unexpected NULL")
		}
		rest := v[4]
		if jsonbBinary {
			if len(rest) == 0 || rest[0] != 1 {
				return errors.New("postgres: each: unknown jsonb binary format version")
			}
			rest = rest[1:]
		}
		if len(rest) < 2 || rest[0] != '{' {
			return errors.New("postgres: each: key document is not an object")
		}
		sp := span{id: len(p.arena)}
		a := append(p.arena, v[0]...) // the id as is, for keyset pagination
		sp.idEnd, sp.doc = len(a), len(a)
		a = append(a, `{"token_id":`...)
		a = appendJSONString(a, v[0])
		a = append(a, `,"key_hash":`...)
		a = appendJSONString(a, v[1])
		if v[2] != nil {
			a = append(a, `,"user_id":`...)
			a = appendJSONString(a, v[2])
		}
		if v[3] != nil {
			a = append(a, `,"team_id":`...)
			a = appendJSONString(a, v[3])
		}
		// rest is "{}" or "{member, ...}" (jsonb puts no space after "{").
		if body := bytes.TrimLeft(rest[1:], " \t\n\r"); len(body) > 0 && body[0] != '}' {
			a = append(a, ',')
			a = append(a, body...)
		} else {
			a = append(a, '}')
		}
		p.arena = a
		sp.docEnd = len(a)
		spans = append(spans, sp)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, sp := range spans {
		p.rows = append(p.rows, row{id: p.arena[sp.id:sp.idEnd], doc: p.arena[sp.doc:sp.docEnd]})
	}
	return nil
}

// appendJSONString appends s as a JSON string: as it is when every byte is
// plain (store.PlainLen; ids and hashes always are), else escaped by
// encoding/json.
func appendJSONString(dst, s []byte) []byte {
	if store.PlainLen(s) != len(s) {
		q, _ := json.Marshal(string(s)) // a string always marshals
		return append(dst, q...)
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// eachCursor is eachRows for a snapshot (a million keys go through here):
// one query through a cursor, fetchPage rows at a time, instead of a
// thousand. While Postgres produces the next page (fetched on its own
// goroutine), fn has this one; if fn uses the reader, its statement waits
// for that fetch (serialQuerier).
//
// Rows come in heap order: a sequential scan. ORDER BY id made the database
// walk the primary key and fetch rows at random, which took a million keys
// from ~4 s to ~8 s with default settings (the sync server sorts keys for
// the proxies itself, for less).
func eachCursor(ctx context.Context, r *reader, sc scan, fn func([]row) error) error {
	r.cursors++
	name := "tollgate_each_" + strconv.Itoa(r.cursors) // constants only: no caller input in SQL
	// Simple protocol: DECLARE and FETCH are not worth preparing, and a
	// cached FETCH statement would pin one cursor's row type.
	simple := pgx.QueryExecModeSimpleProtocol
	if _, err := r.snap.Exec(ctx, "DECLARE "+name+" NO SCROLL CURSOR FOR SELECT "+sc.cols+" FROM "+sc.t.name, simple); err != nil {
		return r.fail(ctx, err)
	}
	fetch := func(p *rowPage) error {
		rows, err := r.snap.Query(ctx, "FETCH "+strconv.Itoa(fetchPage)+" FROM "+name, simple)
		if err != nil {
			return err
		}
		return sc.read(p, rows)
	}
	var next chan error // the fetch in flight, if any
	defer func() {
		if next != nil {
			<-next
		}
		// Also ends with the transaction; closing it early frees its
		// memory on the server when fn failed halfway.
		_, _ = r.snap.Exec(context.WithoutCancel(ctx), "CLOSE "+name, simple)
	}()
	page, spare := new(rowPage), new(rowPage)
	if err := fetch(page); err != nil {
		return r.fail(ctx, err)
	}
	for {
		if len(page.rows) == fetchPage {
			next = make(chan error, 1)
			go func(p *rowPage, done chan<- error) { done <- fetch(p) }(spare, next)
		}
		if len(page.rows) > 0 {
			if err := fn(page.rows); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		err := <-next
		next = nil
		if err != nil {
			return r.fail(ctx, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		page, spare = spare, page
	}
}

// eachStream is eachRows for a snapshot's keys: one SELECT whose rows
// arrive as Postgres produces them, read into pages of fetchPage rows on
// a goroutine of its own while fn has the previous page. A cursor (FETCH,
// eachCursor) made Postgres copy every row into a tuple store before
// sending it, which was 40% of its CPU for a million keys (2.5-3.5 s
// against 1.4-1.6 s streaming, measured on one connection). The
// connection is the query's until the last row: fn must not use the
// reader meanwhile (the reader answers errStreaming).
func eachStream(ctx context.Context, r *reader, sc scan, fn func([]row) error) error {
	sq := r.snap
	sq.mu.Lock()
	defer sq.mu.Unlock()
	sq.streaming.Store(true)
	defer sq.streaming.Store(false)
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := sq.q.Query(qctx, "SELECT "+sc.cols+" FROM "+sc.t.name)
	if err != nil {
		return r.fail(ctx, err)
	}
	defer rows.Close()
	type filled struct {
		p    *rowPage
		last bool
		err  error
	}
	pages := make(chan filled, 1)
	free := make(chan *rowPage, 2)
	free <- new(rowPage)
	free <- new(rowPage)
	go func() {
		defer close(pages)
		for {
			var p *rowPage
			select {
			case p = <-free:
			case <-qctx.Done():
				return
			}
			lr := &limitRows{Rows: rows, n: fetchPage}
			err := sc.read(p, lr)
			if err == nil {
				err = rows.Err()
			}
			select {
			case pages <- filled{p: p, last: lr.done, err: err}:
			case <-qctx.Done():
				return
			}
			if lr.done || err != nil {
				return
			}
		}
	}()
	for f := range pages {
		if f.err != nil {
			cancel() // a query abandoned halfway is cancelled, not read to its end
			return r.fail(ctx, f.err)
		}
		if len(f.p.rows) > 0 {
			if err := fn(f.p.rows); err != nil {
				cancel()
				for range pages { // the reader goroutine ends before the lock is released
				}
				return err
			}
		}
		if f.last {
			return nil
		}
		free <- f.p
	}
	// Closed without the last page: ctx ended (a cancelled query would
	// have sent its error).
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("postgres: the key stream ended early")
}

// limitRows is one page of an open result: at most n rows of Rows, and
// Close leaves Rows open for the next page. done is set once Rows has no
// rows left.
type limitRows struct {
	pgx.Rows
	n, read int
	done    bool
}

func (l *limitRows) Next() bool {
	if l.read >= l.n {
		return false
	}
	if !l.Rows.Next() {
		l.done = true
		return false
	}
	l.read++
	return true
}

func (l *limitRows) Close() {}

// decodeRows decodes page[i] into out[i], split across up to GOMAXPROCS
// goroutines.
func decodeRows[T any](t table, page []row, out []T) error {
	workers := min(runtime.GOMAXPROCS(0), 8, len(page)/64)
	if workers <= 1 {
		return decodeRange(t, page, out)
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	per := (len(page) + workers - 1) / workers
	for w := range workers {
		lo, hi := w*per, min((w+1)*per, len(page))
		wg.Go(func() { errs[w] = decodeRange(t, page[lo:hi], out[lo:hi]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func decodeRange[T any](t table, page []row, out []T) error {
	for i := range page {
		if err := store.DecodeJSON(page[i].doc, &out[i]); err != nil {
			return fmt.Errorf("postgres: decode %s %q: %w", t.kind, page[i].id, err)
		}
	}
	return nil
}

// where builds a conjunction of conditions with numbered parameters.
// Conditions are constants of this package; values are always bound.
type where struct {
	conds []string
	args  []any
}

// eq adds "col = value" unless value is empty (empty filters do not filter).
func (w *where) eq(col, value string) {
	if value != "" {
		w.add(col+" = ?", value)
	}
}

// add adds cond with its single "?" bound to v.
func (w *where) add(cond string, v any) {
	w.args = append(w.args, v)
	w.conds = append(w.conds, strings.Replace(cond, "?", "$"+strconv.Itoa(len(w.args)), 1))
}

// add2 adds cond with its two "?" bound to a and b.
func (w *where) add2(cond string, a, b any) {
	w.args = append(w.args, a)
	cond = strings.Replace(cond, "?", "$"+strconv.Itoa(len(w.args)), 1)
	w.args = append(w.args, b)
	w.conds = append(w.conds, strings.Replace(cond, "?", "$"+strconv.Itoa(len(w.args)), 1))
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// nanos is the part of t below the microsecond that timestamptz drops; the
// created_ns columns keep it so that ordering matches the Go timestamps.
func nanos(t time.Time) int16 { return int16(t.Nanosecond() % 1000) }
