# syntax=docker/dockerfile:1
# Tollgate data-plane proxy: a static binary on distroless/static as UID 65532 (nonroot).
# Build from the repository root:
#   docker build -f deploy/docker/dataplane.Dockerfile -t tollgate/dataplane .
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOOS=linux GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/dataplane ./dataplane && \
    go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/docker/healthcheck && \
    mkdir -p /out/cache

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dataplane /out/healthcheck /usr/local/bin/
# The bbolt cache and its spend outbox log (<cache>.spendlog); mount a volume here to keep them
# across container replacement.
COPY --from=build --chown=65532:65532 /out/cache /var/lib/tollgate
USER 65532:65532
ENV TOLLGATE_LISTEN=:4000 \
    TOLLGATE_CACHE=/var/lib/tollgate/proxy.db
EXPOSE 4000
# Liveness, not readiness: a proxy without a snapshot is alive but not ready (readiness is the
# orchestrator's job: compose/Kubernetes probe /health/readiness).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/healthcheck", "-addr-env=TOLLGATE_LISTEN", "-default-addr=:4000", "-path=/health/liveliness"]
# Docker's default stop timeout (10 s) is shorter than the drain (up to 25 s) plus spend-outbox
# shipping (up to 10 s): run with --stop-timeout 45 (compose: stop_grace_period: 45s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dataplane"]
