package api

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/syncserver"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// SetProxyStats gives the API the sync service's view of the connected
// proxies (syncserver.Server.Stats), for GET /proxies. Call it before
// serving; without it the list is empty.
func (s *Server) SetProxyStats(stats func() syncserver.Stats) { s.proxyStats = stats }

// proxyService serves GET /proxies: what this replica's sync service knows
// about each connected proxy (proxy_admin and proxy_admin_viewer).
type proxyService struct {
	adminv1.UnimplementedProxyServiceServer
	s *Server
}

func (ps *proxyService) ListProxies(ctx context.Context, _ *adminv1.ListProxiesRequest) (*adminv1.ListProxiesResponse, error) {
	if _, err := ps.s.authorize(ctx, authz.ProxyList, authz.Target{}); err != nil {
		return nil, err
	}
	out := &adminv1.ListProxiesResponse{Proxies: []*adminv1.Proxy{}}
	if ps.s.proxyStats == nil {
		return out, nil
	}
	return proxiesOut(ps.s.proxyStats()), nil
}

func proxiesOut(st syncserver.Stats) *adminv1.ListProxiesResponse {
	out := &adminv1.ListProxiesResponse{HeadRevision: st.Head, Proxies: make([]*adminv1.Proxy, 0, len(st.Proxies)+len(st.Disconnected))}
	for _, p := range append(st.Proxies[:len(st.Proxies):len(st.Proxies)], st.Disconnected...) {
		q := &adminv1.Proxy{
			ProxyId: p.ID, Peer: p.Peer, Version: p.Version, ConnectedAt: timestamppb.New(p.ConnectedAt),
			HelloRevision: p.HelloRevision, SentRevision: p.SentRevision, AppliedRevision: p.AppliedRevision,
			Lag: max(st.Head-p.AppliedRevision, 0), LastSeen: timestamppb.New(p.LastSeen),
			OutboxDepth: p.OutboxDepth, SpendAckedSeq: p.SpendAckedSeq, Connected: p.Connected,
		}
		if !p.DisconnectedAt.IsZero() {
			q.DisconnectedAt = timestamppb.New(p.DisconnectedAt)
		}
		if !p.LastSpendBatch.IsZero() {
			q.LastSpendBatch = timestamppb.New(p.LastSpendBatch)
		}
		out.Proxies = append(out.Proxies, q)
	}
	return out
}
