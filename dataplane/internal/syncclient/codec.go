package syncclient

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	gproto "google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// received is a ControlMessage with the bytes it was decoded from: the
// replica's cache stores a snapshot chunk as received instead of encoding
// its entities again.
type received struct {
	msg *syncv1.ControlMessage
	raw []byte
}

// keepRaw is the gRPC proto codec, except that it keeps the encoded bytes of
// what it decodes into a *received. It is named "proto": on the wire
// nothing changes.
type keepRaw struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

func (keepRaw) Name() string { return proto.Name }

func (keepRaw) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (keepRaw) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*received)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	r.raw = data.Materialize() // a copy: data's buffers go back to gRPC's pool
	r.msg = new(syncv1.ControlMessage)
	if err := gproto.Unmarshal(r.raw, r.msg); err != nil {
		return fmt.Errorf("failed to unmarshal: %w", err)
	}
	return nil
}
