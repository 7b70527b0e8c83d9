package syncclient

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	gproto "google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/hugepage"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// received is a ControlMessage with the bytes it was decoded from: the
// replica's cache stores a snapshot chunk as received instead of encoding
// its entities again. A snapshot chunk is not decoded into messages: chunk
// holds its header and its entities' encoded bytes, keys parsed ahead
// (state.Chunk.Prepare), and msg is nil. A chunk set before decoding is
// reused.
type received struct {
	msg    *syncv1.ControlMessage
	chunk  *state.Chunk
	raw    []byte
	framed []byte // raw preceded by frameHeader spare bytes
}

// frameHeader is how many spare bytes precede a received message: the
// replica's cache writes its checksum there and stores the buffer as it
// is (cache.FrameHeader).
const frameHeader = 4

// keepRaw is the gRPC proto codec, except that it keeps the encoded bytes of
// what it decodes into a *received, and leaves a snapshot chunk's entities
// encoded. It is named "proto": on the wire nothing changes.
//
// Large messages (snapshot chunks) are copied into buffers carved from
// huge-page slabs (controlplane/pkg/hugepage): a million-key snapshot is
// ~200 MB of them, and 4 KiB page faults on that fresh memory were a
// tenth of a fresh proxy's CPU. A keepRaw belongs to one stream: gRPC
// calls Unmarshal from the goroutine receiving, one message at a time.
type keepRaw struct{ slab hugepage.Slab }

var protoCodec = encoding.GetCodecV2(proto.Name)

func (*keepRaw) Name() string { return proto.Name }

func (*keepRaw) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (k *keepRaw) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*received)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	// A copy (data's buffers go back to gRPC's pool), after frameHeader
	// spare bytes.
	n := frameHeader + data.Len()
	r.framed = k.slab.Alloc(n)[:n] // a small message gets a buffer of its own
	if n < hugepage.SmallBuf {
		// A small message (a delta, a heartbeat) ends a run of chunks:
		// let the last slab go with them rather than keep its tail for
		// the session's life.
		k.slab = hugepage.Slab{}
	}
	data.CopyTo(r.framed[frameHeader:])
	r.raw = r.framed[frameHeader:]
	c := r.chunk // one to reuse, if any
	if c == nil {
		c = new(state.Chunk)
	}
	r.chunk = nil
	if state.ParseChunk(r.raw, c) {
		// Parsed here, on the receiving goroutine, while the replica adds
		// the previous chunk.
		c.Prepare()
		r.chunk = c
		return nil
	}
	r.msg = new(syncv1.ControlMessage)
	if err := gproto.Unmarshal(r.raw, r.msg); err != nil {
		return fmt.Errorf("failed to unmarshal: %w", err)
	}
	if s := r.msg.GetSnapshot(); s != nil {
		var err error
		// A snapshot in an unusual form (ParseChunk declined it): encoded
		// again, entity by entity; the replica stores it re-encoded.
		if r.chunk, err = state.ChunkOf(s); err != nil {
			return fmt.Errorf("failed to re-encode snapshot chunk: %w", err)
		}
		r.msg, r.raw, r.framed = nil, nil, nil
	}
	return nil
}
