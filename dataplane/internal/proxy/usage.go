package proxy

import (
	"bytes"
	"io"
	"net/http"
	"sync"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

// maxEvent bounds how much of one SSE event is held back to inspect it; a
// larger event passes through uninspected.
const maxEvent = 1 << 20

// sseFilter passes an upstream SSE stream through event by event, reads the
// usage chunk, and drops it when Tollgate (not the client) asked for it.
type sseFilter struct {
	src  io.ReadCloser
	c    *call
	in   []byte // received, not yet a complete event
	out  []byte // complete events to hand to the client
	off  int    // read position in out
	err  error
	pass bool // an oversized event: stop inspecting
	// The pooled slices in and out came from; Close gives them back.
	inp, outp *[]byte
}

// sseBufs recycles the filters' buffers: two fresh 8 KiB buffers per
// stream were ~3% of the proxy's CPU under SSE load (allocation and GC).
var sseBufs = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// maxPooledSSE is the largest buffer given back to the pool (one that grew
// for a large event is left to the GC rather than pinned).
const maxPooledSSE = 64 << 10

func newSSEFilter(src io.ReadCloser, c *call) *sseFilter {
	inp, outp := sseBufs.Get().(*[]byte), sseBufs.Get().(*[]byte)
	return &sseFilter{src: src, c: c, in: (*inp)[:0], out: (*outp)[:0], inp: inp, outp: outp}
}

// Read returns as soon as at least one complete event is available, so the
// proxy (which flushes an SSE response after every write) sends it chunk by chunk.
func (f *sseFilter) Read(p []byte) (int, error) {
	for {
		if f.off < len(f.out) {
			n := copy(p, f.out[f.off:])
			f.off += n
			return n, nil
		}
		if f.err != nil {
			return 0, f.err
		}
		f.out, f.off = f.out[:0], 0
		if len(f.in) == cap(f.in) {
			f.in = append(f.in, 0)[:len(f.in)]
		}
		n, err := f.src.Read(f.in[len(f.in):cap(f.in)])
		f.c.respBytes += int64(n)
		f.in = f.in[:len(f.in)+n]
		f.process(err != nil)
		f.err = err
	}
}

// Close closes the upstream body and recycles the buffers: ReverseProxy
// calls it once, after its last Read.
func (f *sseFilter) Close() error {
	err := f.src.Close()
	if f.inp != nil {
		recycleSSE(f.inp, f.in)
		recycleSSE(f.outp, f.out)
		f.inp, f.outp, f.in, f.out, f.off = nil, nil, nil, nil, 0
		f.err = http.ErrBodyReadAfterClose
	}
	return err
}

func recycleSSE(p *[]byte, b []byte) {
	if cap(b) <= maxPooledSSE {
		*p = b[:0]
		sseBufs.Put(p)
	}
}

// process moves complete events from in to out; at the end of the stream the
// remainder goes out as it is.
func (f *sseFilter) process(final bool) {
	start := 0
	for !f.pass {
		end := eventEnd(f.in, start)
		if end < 0 {
			break
		}
		ev := f.in[start:end]
		if !f.inspect(ev) {
			f.out = append(f.out, ev...)
		}
		start = end
	}
	rest := f.in[start:]
	if final || f.pass || len(rest) > maxEvent {
		f.pass = f.pass || len(rest) > maxEvent
		f.out = append(f.out, rest...)
		rest = rest[:0]
	}
	f.in = f.in[:copy(f.in, rest)]
}

// eventEnd returns the offset after the blank line that ends the event
// starting at from, or -1.
func eventEnd(b []byte, from int) int {
	i := from
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

var (
	usageKey  = []byte(`"usage"`)
	dataField = []byte("data:")
)

// inspect records usage (and a response id) from an event and reports
// whether to drop it.
func (f *sseFilter) inspect(ev []byte) (drop bool) {
	if !bytes.Contains(ev, usageKey) {
		return false
	}
	i := bytes.Index(ev, dataField)
	if i < 0 || (i > 0 && ev[i-1] != '\n') {
		return false
	}
	data := ev[i+len(dataField):]
	if j := bytes.IndexByte(data, '\n'); j >= 0 {
		data = data[:j]
	}
	data = bytes.TrimSpace(data)
	r := provider.EventUsage(f.c.pl.Wire, data, &f.c.usage)
	if r.ID != nil && f.c.respID == "" {
		if id, ok := enforce.StringValue(r.ID); ok && saneResponseID(id) {
			f.c.respID = id
		}
	}
	if !r.Found {
		return false
	}
	f.c.usageKnown = true
	// The usage chunk OpenAI sends for include_usage has "choices": [].
	// A provider that puts usage on a content chunk keeps the chunk.
	return f.c.hideUsage && r.UsageOnly
}

// maxUsageCapture bounds the captured usage object.
const maxUsageCapture = 16 << 10

// usageSniffer passes a JSON response through untouched and picks the
// top-level "usage" object out of it as it streams by, so a response is
// never buffered whole. It tracks just enough JSON state for that: string
// and escape state, depth, and whether the next string at depth 1 is a key.
type usageSniffer struct {
	src io.ReadCloser
	c   *call

	depth     int
	inStr     bool
	esc       bool
	keyStr    bool
	expectKey bool
	top       bool // top-level value is an object
	key       [8]byte
	keyLen    int
	keyLong   bool
	usageNext bool
	capturing bool
	broken    bool
	capBuf    []byte
	// The top-level "id" (the upstream's response id, chatcmpl-...): idNext
	// after its key, capturingID inside its string value.
	idNext      bool
	capturingID bool
	idLen       int
	idBuf       [maxResponseID]byte
	// wantID is kept for the Responses API's routing; the id is captured
	// for every answer (the spend log's request_id).
	wantID bool
}

// maxResponseID bounds a recorded upstream response id; a longer (or
// escaped) one is not recorded and the spend record gets its own id.
const maxResponseID = 128

// saneResponseID accepts an upstream response id as a spend log's
// request_id: short, printable ASCII, no spaces.
func saneResponseID(id string) bool {
	if id == "" || len(id) > maxResponseID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func newUsageSniffer(src io.ReadCloser, c *call) *usageSniffer {
	return &usageSniffer{src: src, c: c, wantID: c.route == enforce.RouteResponses}
}

func (s *usageSniffer) Read(p []byte) (int, error) {
	n, err := s.src.Read(p)
	s.c.respBytes += int64(n)
	if n > 0 && !s.broken {
		s.feed(p[:n])
	}
	return n, err
}

func (s *usageSniffer) Close() error { return s.src.Close() }

func (s *usageSniffer) feed(b []byte) {
	for i := 0; i < len(b); i++ {
		if s.inStr && !s.keyStr && !s.capturing && !s.capturingID && !s.esc {
			// Skip string content fast: to the next quote or backslash.
			rest := b[i:]
			q := bytes.IndexByte(rest, '"')
			if q >= 0 {
				rest = rest[:q]
			}
			if bs := bytes.IndexByte(rest, '\\'); bs >= 0 {
				i += bs
			} else if q >= 0 {
				i += q
			} else {
				return
			}
		}
		c := b[i]
		if s.capturing {
			if len(s.capBuf) >= maxUsageCapture {
				s.capturing, s.broken = false, true
				return
			}
			s.capBuf = append(s.capBuf, c)
		}
		if s.inStr && s.capturingID {
			switch {
			case c == '"':
				s.inStr, s.capturingID = false, false
				if s.c.respID == "" && saneResponseID(string(s.idBuf[:s.idLen])) {
					s.c.respID = string(s.idBuf[:s.idLen])
				}
			case c == '\\' || s.idLen == len(s.idBuf):
				// Escaped or too long: not recorded; skip the rest as any
				// string.
				s.capturingID, s.esc = false, c == '\\'
			default:
				s.idBuf[s.idLen] = c
				s.idLen++
			}
			continue
		}
		if s.inStr {
			switch {
			case s.esc:
				s.esc = false
				s.keyLong = true // escaped keys are never "usage"
			case c == '\\':
				s.esc = true
			case c == '"':
				s.inStr = false
				if s.keyStr {
					s.usageNext = !s.keyLong && string(s.key[:s.keyLen]) == "usage"
					s.idNext = !s.keyLong && string(s.key[:s.keyLen]) == "id"
				}
			case s.keyStr:
				if s.keyLen < len(s.key) {
					s.key[s.keyLen] = c
					s.keyLen++
				} else {
					s.keyLong = true
				}
			}
			continue
		}
		switch c {
		case '"':
			s.inStr = true
			s.keyStr = s.top && s.depth == 1 && s.expectKey
			s.keyLen, s.keyLong = 0, false
			if !s.keyStr && s.idNext && s.depth == 1 && s.c.respID == "" {
				s.capturingID, s.idLen = true, 0
			}
			s.idNext = false
		case ':':
			if s.depth == 1 {
				s.expectKey = false
			}
		case ',':
			if s.depth == 1 {
				s.expectKey, s.usageNext, s.idNext = true, false, false
			}
		case '{', '[':
			s.idNext = false
			if s.depth == 0 {
				s.top = c == '{'
				s.expectKey = s.top
			}
			if s.depth == 1 && s.usageNext && c == '{' && !s.capturing {
				s.capturing = true
				s.capBuf = append(s.capBuf[:0], c)
			}
			s.depth++
		case '}', ']':
			s.depth--
			if s.capturing && s.depth == 1 {
				s.capturing = false
				if provider.ParseUsage(s.c.pl.Wire, s.capBuf, &s.c.usage) {
					s.c.usageKnown = true
				}
			}
		}
	}
}
