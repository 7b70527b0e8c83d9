package saasapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// JobServer is the gRPC JobService the proxies call.
type JobServer struct {
	saasv1.UnimplementedJobServiceServer
	s *Service
}

// JobServer returns the gRPC service.
func (s *Service) JobServer() *JobServer { return &JobServer{s: s} }

// statusCodes maps the API's statuses to gRPC codes and back (the proxy
// turns the code into the HTTP status and the message into the detail).
var statusCodes = map[int]codes.Code{
	http.StatusBadRequest:          codes.InvalidArgument,
	http.StatusUnprocessableEntity: codes.OutOfRange,
	http.StatusForbidden:           codes.PermissionDenied,
	http.StatusNotFound:            codes.NotFound,
	http.StatusServiceUnavailable:  codes.Unavailable,
	http.StatusUnauthorized:        codes.Unauthenticated,
}

// HTTPStatus is the HTTP status for a JobService error code.
func HTTPStatus(c codes.Code) int {
	for h, g := range statusCodes {
		if g == c {
			return h
		}
	}
	return http.StatusServiceUnavailable
}

// auth accepts the sync token, or (with PeerAuthenticated) a client
// certificate verified against --client-ca.
func (j *JobServer) auth(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	const scheme = "bearer "
	if j.s.hasTok && len(vals) == 1 && len(vals[0]) > len(scheme) && strings.EqualFold(vals[0][:len(scheme)], scheme) &&
		digestEq(j.s.token, strings.TrimSpace(vals[0][len(scheme):])) {
		return nil
	}
	if j.s.peer {
		if p, ok := peer.FromContext(ctx); ok {
			// The control plane's TLS config verifies every certificate
			// presented against --client-ca during the handshake itself
			// (pkg/certs: VerifyConnection, so crypto/tls leaves
			// VerifiedChains empty); here one must have been presented.
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				return nil
			}
		}
	}
	return status.Error(codes.Unauthenticated, "a valid sync token is required")
}

func reply(body []byte, err error) (*saasv1.JobReply, error) {
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			c, ok := statusCodes[ae.status]
			if !ok {
				c = codes.Unavailable
			}
			return nil, status.Error(c, ae.detail)
		}
		return nil, status.Error(codes.Unavailable, detailUnavailable)
	}
	return &saasv1.JobReply{Body: body}, nil
}

func (j *JobServer) CreateJob(ctx context.Context, r *saasv1.CreateJobRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.CreateJob(ctx, r.TeamId, r.UserId, r.JobType, r.Metadata))
}

func (j *JobServer) GetJob(ctx context.Context, r *saasv1.GetJobRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.GetJob(ctx, r.TeamId, r.JobId))
}

func (j *JobServer) StartCall(ctx context.Context, r *saasv1.StartCallRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.StartCall(ctx, r.TeamId, r.JobId, r.ModelGroup))
}

func (j *JobServer) RecordCall(ctx context.Context, r *saasv1.RecordCallRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.RecordCall(ctx, store.JobCall{
		CallID: fmt.Sprintf("%s/%d", r.CallId, r.Attempt), RequestID: r.CallId, Attempt: int(r.Attempt), JobID: r.JobId, TeamID: r.TeamId,
		ModelGroup: r.ModelGroup, Model: r.Model, DeploymentID: r.DeploymentId, Purpose: r.Purpose, ProxyID: r.ProxyId,
		PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens, TotalTokens: r.TotalTokens,
		Cost: r.Cost, LatencyMS: r.LatencyMs, Status: int(r.Status), Error: r.Error,
	}))
}

func (j *JobServer) CompleteJob(ctx context.Context, r *saasv1.CompleteJobRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.CompleteJob(ctx, r.TeamId, r.JobId, r.Status, r.Metadata, r.ErrorMessage))
}

func (j *JobServer) ListTeamJobs(ctx context.Context, r *saasv1.ListTeamJobsRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.ListJobs(ctx, r.TeamId, int(r.Limit), int(r.Offset)))
}

func (j *JobServer) ListCreditTransactions(ctx context.Context, r *saasv1.ListCreditTransactionsRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	return reply(j.s.ListTransactions(ctx, r.TeamId, int(r.Limit)))
}

func (j *JobServer) AdminGetTeam(ctx context.Context, r *saasv1.AdminGetTeamRequest) (*saasv1.JobReply, error) {
	if err := j.auth(ctx); err != nil {
		return nil, err
	}
	if len(r.AdminKeySha256) != sha256.Size || subtle.ConstantTimeCompare(r.AdminKeySha256, j.s.master[:]) != 1 {
		return reply(nil, fail(http.StatusUnauthorized, detailInvalidAdmin))
	}
	t, err := getSaaSTeam(ctx, j.s.st.Read(), r.TeamId)
	if err != nil {
		return reply(nil, j.s.storeError("admin get team", err))
	}
	return reply(json.Marshal(teamView(&t)))
}
