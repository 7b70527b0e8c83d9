package anthropic

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

// StreamTranslator turns a Messages event stream into chat completion
// chunks as the events arrive: message_start opens the assistant turn,
// text deltas become content deltas, tool_use blocks and their
// input_json_delta become tool_calls deltas, message_delta carries the
// finish reason, message_stop ends with the usage chunk (when the client
// asked for it) and [DONE]. Usage is read into u from message_start and
// message_delta.
type StreamTranslator struct {
	src          io.ReadCloser
	u            *provider.Usage
	known        *bool
	includeUsage bool

	in, out []byte
	off     int
	err     error
	// The chunk prefix: `data: {"id":...,"object":"chat.completion.chunk","created":...,"model":...,"choices":`.
	head  []byte
	tools []int16 // content block index -> tool call index (-1: not a tool)
	ntool int16
	// The pooled slices in and out came from; Close gives them back.
	inp, outp *[]byte
}

// bufs recycles the translators' buffers (as the proxy's SSE filter does:
// two fresh 8 KiB buffers per stream are measurable under load).
var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// maxPooled is the largest buffer given back to the pool.
const maxPooled = 64 << 10

// NewStreamTranslator wraps a Messages event stream.
func NewStreamTranslator(src io.ReadCloser, u *provider.Usage, known *bool, includeUsage bool) *StreamTranslator {
	inp, outp := bufs.Get().(*[]byte), bufs.Get().(*[]byte)
	return &StreamTranslator{src: src, u: u, known: known, includeUsage: includeUsage,
		in: (*inp)[:0], out: (*outp)[:0], inp: inp, outp: outp}
}

func (s *StreamTranslator) Read(p []byte) (int, error) {
	for {
		if s.off < len(s.out) {
			n := copy(p, s.out[s.off:])
			s.off += n
			return n, nil
		}
		if s.err != nil {
			return 0, s.err
		}
		s.out, s.off = s.out[:0], 0
		if len(s.in) == cap(s.in) {
			s.in = append(s.in, 0)[:len(s.in)]
		}
		n, err := s.src.Read(s.in[len(s.in):cap(s.in)])
		s.in = s.in[:len(s.in)+n]
		start := 0
		for {
			end := eventEnd(s.in, start)
			if end < 0 {
				break
			}
			s.Event(s.in[start:end])
			start = end
		}
		s.in = s.in[:copy(s.in, s.in[start:])]
		s.err = err
	}
}

// Close closes the upstream body and recycles the buffers; reads after
// Close fail.
func (s *StreamTranslator) Close() error {
	err := s.src.Close()
	if s.inp != nil {
		recycle(s.inp, s.in)
		recycle(s.outp, s.out)
		s.inp, s.outp, s.in, s.out, s.off = nil, nil, nil, nil, 0
		s.err = io.ErrClosedPipe
	}
	return err
}

func recycle(p *[]byte, b []byte) {
	if cap(b) <= maxPooled {
		*p = b[:0]
		bufs.Put(p)
	}
}

// eventEnd returns the offset after the blank line ending the event that
// starts at from, or -1.
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

var dataField = []byte("data:")

// Event translates one SSE event (its raw bytes, blank line included) and
// appends the chunks it yields to the output.
func (s *StreamTranslator) Event(ev []byte) {
	i := bytes.Index(ev, dataField)
	if i < 0 || (i > 0 && ev[i-1] != '\n') {
		return
	}
	data := ev[i+len(dataField):]
	if j := bytes.IndexByte(data, '\n'); j >= 0 {
		data = data[:j]
	}
	data = bytes.TrimSpace(data)
	var o enforce.Object
	if o.Parse(data) != nil {
		return
	}
	ts, _ := o.Lookup("type")
	switch string(o.Raw(ts)) {
	case `"message_start"`:
		var m enforce.Object
		ms, _ := o.Lookup("message")
		if m.Parse(o.Raw(ms)) != nil {
			return
		}
		id, _ := m.Lookup("id")
		model, _ := m.Lookup("model")
		s.head = append(s.head[:0], `data: {"id":`...)
		s.head = appendRawString(s.head, m.Raw(id))
		s.head = append(s.head, `,"object":"chat.completion.chunk","created":`...)
		s.head = strconv.AppendInt(s.head, time.Now().Unix(), 10)
		s.head = append(s.head, `,"model":`...)
		s.head = appendRawString(s.head, m.Raw(model))
		s.head = append(s.head, `,"choices":`...)
		if us, ok := m.Lookup("usage"); ok && provider.ParseUsage(provider.WireAnthropic, m.Raw(us), s.u) {
			*s.known = true
		}
		s.chunk(`{"role":"assistant","content":""}`, nil, "")
	case `"content_block_start"`:
		var cb enforce.Object
		idx := s.index(&o)
		cs, _ := o.Lookup("content_block")
		if cb.Parse(o.Raw(cs)) != nil {
			return
		}
		t, _ := cb.Lookup("type")
		if string(cb.Raw(t)) != `"tool_use"` || idx < 0 {
			return
		}
		for len(s.tools) <= idx {
			s.tools = append(s.tools, -1)
		}
		s.tools[idx] = s.ntool
		id, _ := cb.Lookup("id")
		name, _ := cb.Lookup("name")
		s.begin()
		s.out = append(s.out, `{"tool_calls":[{"index":`...)
		s.out = strconv.AppendInt(s.out, int64(s.ntool), 10)
		s.out = append(s.out, `,"id":`...)
		s.out = appendRawString(s.out, cb.Raw(id))
		s.out = append(s.out, `,"type":"function","function":{"name":`...)
		s.out = appendRawString(s.out, cb.Raw(name))
		s.out = append(s.out, `,"arguments":""}}]}`...)
		s.end("")
		s.ntool++
	case `"content_block_delta"`:
		var d enforce.Object
		ds, _ := o.Lookup("delta")
		if d.Parse(o.Raw(ds)) != nil {
			return
		}
		t, _ := d.Lookup("type")
		switch string(d.Raw(t)) {
		case `"text_delta"`:
			tx, _ := d.Lookup("text")
			s.begin()
			s.out = append(s.out, `{"content":`...)
			s.out = appendRawString(s.out, d.Raw(tx))
			s.out = append(s.out, '}')
			s.end("")
		case `"input_json_delta"`:
			idx := s.index(&o)
			if idx < 0 || idx >= len(s.tools) || s.tools[idx] < 0 {
				return
			}
			pj, _ := d.Lookup("partial_json")
			s.begin()
			s.out = append(s.out, `{"tool_calls":[{"index":`...)
			s.out = strconv.AppendInt(s.out, int64(s.tools[idx]), 10)
			s.out = append(s.out, `,"function":{"arguments":`...)
			s.out = appendRawString(s.out, d.Raw(pj))
			s.out = append(s.out, `}}]}`...)
			s.end("")
		}
	case `"message_delta"`:
		if us, ok := o.Lookup("usage"); ok && provider.ParseUsage(provider.WireAnthropic, o.Raw(us), s.u) {
			*s.known = true
		}
		var d enforce.Object
		ds, _ := o.Lookup("delta")
		if d.Parse(o.Raw(ds)) != nil {
			return
		}
		stop, _ := d.Lookup("stop_reason")
		if v := d.Raw(stop); len(v) > 0 && v[0] == '"' {
			s.chunk(`{}`, nil, finishReason(v))
		}
	case `"message_stop"`:
		if s.includeUsage && len(s.head) > 0 {
			s.out = append(s.out, s.head...)
			s.out = append(s.out, `[],"usage":`...)
			s.out = appendUsage(s.out, s.u)
			s.out = append(s.out, "}\n\n"...)
		}
		s.out = append(s.out, "data: [DONE]\n\n"...)
	case `"error"`:
		es, _ := o.Lookup("error")
		s.out = append(s.out, `data: {"error":`...)
		s.out = append(s.out, o.Raw(es)...)
		s.out = append(s.out, "}\n\n"...)
	}
	// ping and content_block_stop yield nothing.
}

func (s *StreamTranslator) index(o *enforce.Object) int {
	is, ok := o.Lookup("index")
	if !ok {
		return -1
	}
	n, ok := enforce.ParseInt(o.Raw(is))
	if !ok || n > 1024 {
		return -1
	}
	return int(n)
}

// begin opens a chunk with one choice; end closes it.
func (s *StreamTranslator) begin() {
	if len(s.head) == 0 { // no message_start: an anonymous chunk
		s.head = append(s.head, `data: {"id":"","object":"chat.completion.chunk","created":0,"model":"","choices":`...)
	}
	s.out = append(s.out, s.head...)
	s.out = append(s.out, `[{"index":0,"delta":`...)
}

func (s *StreamTranslator) end(finish string) {
	if finish == "" {
		s.out = append(s.out, `,"finish_reason":null}]}`+"\n\n"...)
		return
	}
	s.out = append(s.out, `,"finish_reason":"`...)
	s.out = append(s.out, finish...)
	s.out = append(s.out, `"}]}`+"\n\n"...)
}

func (s *StreamTranslator) chunk(delta string, _ []byte, finish string) {
	s.begin()
	s.out = append(s.out, delta...)
	s.end(finish)
}
