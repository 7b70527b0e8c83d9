// Command bareproxy is the floor of the proxy benchmark (deploy/bench/proxy.sh):
// a bare net/http/httputil.ReverseProxy to one upstream, with the same
// upstream Transport settings and server timeouts as Tollgate's data plane
// (dataplane/internal/proxy.NewTransport, dataplane's http.Server), and
// nothing else: no auth, no decision, no metrics, no logging per request.
// SSE responses are flushed chunk by chunk (ReverseProxy does so for
// text/event-stream).
//
// It reads the request body (at most 10 MiB, Tollgate's limit) before
// forwarding it. Streaming the inbound body straight into the upstream request
// breaks SSE under load with Go's HTTP/1 server (golang/go#40747): writing the
// response headers closes the inbound body, the Transport's final read of it
// fails, and the upstream connection is torn down mid-stream (the client gets
// "unexpected EOF"). Every LLM gateway reads the body anyway.
//
//	go run ./deploy/bench/bareproxy -listen 127.0.0.1:18405 -upstream http://127.0.0.1:18400
//
// Keep transport() in step with dataplane/internal/proxy.NewTransport (deploy/
// may not import the data plane's internals).
package main

import (
	"bytes"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func transport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           2048,
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		ReadBufferSize:         32 << 10,
		WriteBufferSize:        32 << 10,
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18405", "address to serve on")
	upstream := flag.String("upstream", "http://127.0.0.1:18400", "upstream base URL")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
		},
		Transport: transport(),
		ErrorLog:  log.Default(),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 10<<20))
			if err != nil {
				http.Error(w, "bad body", http.StatusRequestEntityTooLarge)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		rp.ServeHTTP(w, r)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	srv := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	log.Fatal(srv.ListenAndServe())
}
