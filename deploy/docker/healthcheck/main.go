// Command healthcheck is the Docker HEALTHCHECK of Tollgate's distroless images, which have no
// shell or curl: it GETs one URL on loopback and exits 0 on a 2xx answer, 1 otherwise.
//
//	healthcheck -addr-env TOLLGATE_HTTP_ADDR -default-addr :8080 -path /health
//	healthcheck http://127.0.0.1:4000/health/readiness
//
// With -addr-env the port comes from the same TOLLGATE_* variable the server reads, so an image
// started with another address still checks the right port.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addrEnv := flag.String("addr-env", "", "environment variable holding the server's listen address (host:port)")
	defAddr := flag.String("default-addr", ":8080", "listen address when the variable is unset")
	path := flag.String("path", "/health", "path to GET")
	timeout := flag.Duration("timeout", 3*time.Second, "request timeout")
	flag.Parse()

	url := flag.Arg(0)
	if url == "" {
		addr := *defAddr
		if v := os.Getenv(*addrEnv); *addrEnv != "" && v != "" {
			addr = v
		}
		u, err := loopbackURL(addr, *path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "healthcheck:", err)
			os.Exit(1)
		}
		url = u
	}
	if err := check(url, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
}

// loopbackURL turns a listen address (":8080", "0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080")
// into a URL the check can reach from inside the container.
func loopbackURL(addr, path string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

func check(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
