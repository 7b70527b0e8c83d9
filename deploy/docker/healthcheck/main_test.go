package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestLoopbackURL(t *testing.T) {
	for addr, want := range map[string]string{
		":8080":          "http://127.0.0.1:8080/health",
		"0.0.0.0:4000":   "http://127.0.0.1:4000/health",
		"[::]:4000":      "http://127.0.0.1:4000/health",
		"127.0.0.1:8080": "http://127.0.0.1:8080/health",
		"[::1]:8080":     "http://[::1]:8080/health",
	} {
		got, err := loopbackURL(addr, "/health")
		if err != nil || got != want {
			t.Errorf("loopbackURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := loopbackURL("8080", "/health"); err == nil {
		t.Error("an address without a port must fail")
	}
}

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			w.Write([]byte(`{"status":"healthy"}`))
			return
		}
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	if err := check(srv.URL+"/ok", time.Second); err != nil {
		t.Errorf("healthy server: %v", err)
	}
	if err := check(srv.URL+"/no", time.Second); err == nil {
		t.Error("503 must fail")
	}
	srv.Close()
	if err := check(srv.URL+"/ok", time.Second); err == nil {
		t.Error("a closed server must fail")
	}
}
