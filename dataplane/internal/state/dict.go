package state

import (
	"encoding/binary"
	"slices"
	"strings"
	"sync/atomic"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
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
	keys    []string
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
	d.polIdx[string(d.policyKey(&syncv1.Key{}))] = 0
	lims := []limitsRec{noLimits}
	d.limits.Store(&lims)
	d.limIdx[noLimits] = 0
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

// internLimits returns the index of l's profile. A nil l means no limits.
func (d *dict) internLimits(l *syncv1.Limits) uint32 {
	if l == nil {
		return 0
	}
	dur, ok := d.durIdx[l.BudgetDuration]
	if !ok {
		dur = publish(&d.durs, strings.Clone(l.BudgetDuration))
		d.durIdx[(*d.durs.Load())[dur]] = dur
	}
	r := limitsRec{
		maxBudget: l.MaxBudget, softBudget: l.SoftBudget,
		rpm: l.RpmLimit, tpm: l.TpmLimit, parallel: l.MaxParallelRequests,
		dur: dur,
	}
	if i, ok := d.limIdx[r]; ok {
		return i
	}
	i := publish(&d.limits, r)
	d.limIdx[r] = i
	return i
}

// internPolicy returns the index of k's policy, creating it when new.
// Identical policies (same lists in the same order, same maps) share one.
func (d *dict) internPolicy(k *syncv1.Key) uint32 {
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
func (d *dict) policyKey(k *syncv1.Key) []byte {
	b := d.scratch[:0]
	b = appendList(b, k.Models)
	b = appendList(b, k.EnforcedParams)
	b = appendList(b, k.AllowedRoutes)
	b = appendList(b, k.Tags)
	d.keys = sortedKeys(d.keys[:0], k.ModelRpmLimit)
	b = binary.AppendUvarint(b, uint64(len(d.keys)))
	for _, m := range d.keys {
		b = appendStr(b, m)
		b = binary.AppendVarint(b, k.ModelRpmLimit[m])
	}
	d.keys = sortedKeys(d.keys[:0], k.ModelTpmLimit)
	b = binary.AppendUvarint(b, uint64(len(d.keys)))
	for _, m := range d.keys {
		b = appendStr(b, m)
		b = binary.AppendVarint(b, k.ModelTpmLimit[m])
	}
	d.keys = sortedKeys(d.keys[:0], k.ModelMaxBudget)
	b = binary.AppendUvarint(b, uint64(len(d.keys)))
	for _, m := range d.keys {
		mb := k.ModelMaxBudget[m]
		b = appendStr(b, m)
		b = binary.AppendVarint(b, mb.GetBudgetLimit())
		b = appendStr(b, mb.GetTimePeriod())
	}
	d.scratch = b
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

func sortedKeys[V any](dst []string, m map[string]V) []string {
	for k := range m {
		dst = append(dst, k)
	}
	slices.Sort(dst)
	return dst
}

// newPolicy copies k's policy fields; empty lists and maps become nil.
func newPolicy(k *syncv1.Key) *Policy {
	p := &Policy{
		Models:         cloneList(k.Models),
		EnforcedParams: cloneList(k.EnforcedParams),
		AllowedRoutes:  cloneList(k.AllowedRoutes),
		Tags:           cloneList(k.Tags),
	}
	if len(k.ModelRpmLimit) > 0 {
		p.ModelRPMLimit = make(map[string]int64, len(k.ModelRpmLimit))
		for m, v := range k.ModelRpmLimit {
			p.ModelRPMLimit[strings.Clone(m)] = v
		}
	}
	if len(k.ModelTpmLimit) > 0 {
		p.ModelTPMLimit = make(map[string]int64, len(k.ModelTpmLimit))
		for m, v := range k.ModelTpmLimit {
			p.ModelTPMLimit[strings.Clone(m)] = v
		}
	}
	if len(k.ModelMaxBudget) > 0 {
		p.ModelMaxBudget = make(map[string]ModelBudget, len(k.ModelMaxBudget))
		for m, v := range k.ModelMaxBudget {
			p.ModelMaxBudget[strings.Clone(m)] = ModelBudget{BudgetLimit: v.GetBudgetLimit(), TimePeriod: strings.Clone(v.GetTimePeriod())}
		}
	}
	return p
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
