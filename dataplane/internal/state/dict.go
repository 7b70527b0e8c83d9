package state

import (
	"encoding/binary"
	"strings"
	"sync/atomic"
)

// dict interns what many keys share: policies (models, enforced params,
// routes, tags, per-model limits) and limit profiles. Key records hold a
// uint32 index. Both tables only grow (an unused entry lingers until the next
// snapshot; there are few distinct ones) and are published with an atomic
// store of a longer slice header: readers index the slice they loaded, the
// writer only writes elements past every published length.
type dict struct {
	policies atomic.Pointer[[]*Policy]
	polIdx   map[string]uint32 // canonical encoding -> index (writer only)

	limits atomic.Pointer[[]limitsRec]
	limIdx map[limitsRec]uint32 // writer only; pointer-free key and value

	durs   atomic.Pointer[[]string] // budget durations ("30d"), by index
	durIdx map[string]uint32

	scratch []byte
	// The profile interned last (writer only).
	lastLim    limitsRec
	lastLimIdx uint32
}

// limitsRec is Limits without the per-key reset time, pointer-free so it can
// key a map the garbage collector does not scan.
type limitsRec struct {
	maxBudget, softBudget, rpm, tpm, parallel int64
	dur                                       uint32 // index into durs; 0 is ""
}

var noLimits = limitsRec{maxBudget: -1, softBudget: -1, rpm: -1, tpm: -1, parallel: -1}

// emptyPolicy is index 0 of every dict.
var emptyPolicy = &Policy{}

func newDict() *dict {
	d := &dict{
		polIdx: make(map[string]uint32),
		limIdx: make(map[limitsRec]uint32),
		durIdx: map[string]uint32{"": 0},
	}
	pols := []*Policy{emptyPolicy}
	d.policies.Store(&pols)
	d.polIdx[string(d.policyKey(&keyView{}))] = 0
	lims := []limitsRec{noLimits}
	d.limits.Store(&lims)
	d.limIdx[noLimits] = 0
	d.lastLim = noLimits
	durs := []string{""}
	d.durs.Store(&durs)
	return d
}

// publish appends v to the table behind p and returns its index.
func publish[T any](p *atomic.Pointer[[]T], v T) uint32 {
	cur := *p.Load()
	next := append(cur, v)
	p.Store(&next)
	return uint32(len(cur))
}

func (d *dict) policy(i uint32) *Policy { return (*d.policies.Load())[i] }

func (d *dict) limitsAt(i uint32, resetAt int64) Limits {
	r := (*d.limits.Load())[i]
	return Limits{
		MaxBudget:           r.maxBudget,
		SoftBudget:          r.softBudget,
		BudgetDuration:      (*d.durs.Load())[r.dur],
		BudgetResetAtUnix:   resetAt,
		RPMLimit:            r.rpm,
		TPMLimit:            r.tpm,
		MaxParallelRequests: r.parallel,
	}
}

// internLimits returns the index of k's limits profile (0, no limits,
// when k has none).
func (d *dict) internLimits(k *keyView) uint32 {
	if !k.hasLimits {
		return 0
	}
	l := &k.limits
	dur, ok := uint32(0), l.duration == "" // index 0 is ""
	if !ok {
		dur, ok = d.durIdx[l.duration]
	}
	if !ok {
		dur = publish(&d.durs, strings.Clone(l.duration))
		d.durIdx[(*d.durs.Load())[dur]] = dur
	}
	r := limitsRec{
		maxBudget: l.maxBudget, softBudget: l.softBudget,
		rpm: l.rpm, tpm: l.tpm, parallel: l.parallel,
		dur: dur,
	}
	if d.lastLim == r {
		return d.lastLimIdx // keys in a row often share their limits
	}
	i, ok := d.limIdx[r]
	if !ok {
		i = publish(&d.limits, r)
		d.limIdx[r] = i
	}
	d.lastLim, d.lastLimIdx = r, i
	return i
}

// internPolicy returns the index of k's policy, creating it when new.
// Identical policies (same lists in the same order, same maps) share one.
func (d *dict) internPolicy(k *keyView) uint32 {
	if len(k.models)+len(k.enforced)+len(k.routes)+len(k.tags)+len(k.rpm)+len(k.tpm)+len(k.budgets) == 0 {
		return 0 // the empty policy, most keys'
	}
	b := d.policyKey(k)
	if i, ok := d.polIdx[string(b)]; ok {
		return i
	}
	i := publish(&d.policies, newPolicy(k))
	d.polIdx[string(b)] = i
	return i
}

// policyKey is the canonical encoding of k's policy (maps in key order),
// built in d.scratch.
func (d *dict) policyKey(k *keyView) []byte {
	b := d.scratch[:0]
	b = appendList(b, k.models)
	b = appendList(b, k.enforced)
	b = appendList(b, k.routes)
	b = appendList(b, k.tags)
	b = appendModelInts(b, k.rpm)
	b = appendModelInts(b, k.tpm)
	b = binary.AppendUvarint(b, uint64(len(k.budgets)))
	for _, mb := range k.budgets {
		b = appendStr(b, mb.model)
		b = binary.AppendVarint(b, mb.limit)
		b = appendStr(b, mb.period)
	}
	d.scratch = b
	return b
}

func appendModelInts(b []byte, l []modelInt) []byte {
	b = binary.AppendUvarint(b, uint64(len(l)))
	for _, m := range l {
		b = appendStr(b, m.model)
		b = binary.AppendVarint(b, m.v)
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendList(b []byte, l []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(l)))
	for _, s := range l {
		b = appendStr(b, s)
	}
	return b
}

// newPolicy copies k's policy fields; empty lists and maps become nil.
func newPolicy(k *keyView) *Policy {
	p := &Policy{
		Models:         cloneList(k.models),
		EnforcedParams: cloneList(k.enforced),
		AllowedRoutes:  cloneList(k.routes),
		Tags:           cloneList(k.tags),
		ModelRPMLimit:  modelMap(k.rpm),
		ModelTPMLimit:  modelMap(k.tpm),
	}
	if len(k.budgets) > 0 {
		p.ModelMaxBudget = make(map[string]ModelBudget, len(k.budgets))
		for _, v := range k.budgets {
			p.ModelMaxBudget[strings.Clone(v.model)] = ModelBudget{BudgetLimit: v.limit, TimePeriod: strings.Clone(v.period)}
		}
	}
	return p
}

func modelMap(l []modelInt) map[string]int64 {
	if len(l) == 0 {
		return nil
	}
	m := make(map[string]int64, len(l))
	for _, v := range l {
		m[strings.Clone(v.model)] = v.v
	}
	return m
}

// cloneList copies l (strings included, so a policy never pins a decoded
// message's buffers); empty becomes nil.
func cloneList(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = strings.Clone(s)
	}
	return out
}
