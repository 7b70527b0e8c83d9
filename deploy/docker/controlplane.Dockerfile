# syntax=docker/dockerfile:1
# Tollgate control plane: a static binary on distroless/static as UID 65532 (nonroot).
# Build from the repository root:
#   docker build -f deploy/docker/controlplane.Dockerfile -t tollgate/controlplane .
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOOS=linux GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/controlplane ./controlplane && \
    go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/docker/healthcheck && \
    mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/controlplane /out/healthcheck /usr/local/bin/
# The embedded store's --data-dir (unused with --database-url); owned by the runtime user.
COPY --from=build --chown=65532:65532 /out/data /var/lib/tollgate
USER 65532:65532
ENV TOLLGATE_HTTP_ADDR=:8080 \
    TOLLGATE_GRPC_ADDR=:50051 \
    TOLLGATE_DATA_DIR=/var/lib/tollgate
EXPOSE 8080 50051
# distroless has no shell or curl: a tiny static Go client checks GET /health on the port
# that TOLLGATE_HTTP_ADDR names.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/healthcheck", "-addr-env=TOLLGATE_HTTP_ADDR", "-default-addr=:8080", "-path=/health"]
ENTRYPOINT ["/usr/local/bin/controlplane"]
