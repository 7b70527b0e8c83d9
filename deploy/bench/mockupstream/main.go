// Command mockupstream is the OpenAI-compatible upstream of the proxy
// benchmark (deploy/bench/proxy.sh): POST /v1/chat/completions (and
// /chat/completions, /v1/completions, /completions) answers a fixed ~500-byte
// chat completion with usage, or, when the body asks for "stream": true, an
// SSE stream of -chunks content chunks, a finish chunk, a usage chunk when
// stream_options.include_usage is set, and [DONE], flushed chunk by chunk.
// -delay holds every answer (before its first byte) for a fixed time.
//
//	go run ./deploy/bench/mockupstream -listen 127.0.0.1:18400 [-delay 0] [-chunks 8]
//
// It runs as its own process so that the load generator's CPU use is not
// counted in it and does not share its scheduler. It never inspects the
// credential it is sent.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"
)

const completion = `{"id":"chatcmpl-tollgatebench0000000000000000","object":"chat.completion","created":1764633600,` +
	`"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench000000","choices":[{"index":0,"message":` +
	`{"role":"assistant","content":"Hello! This is the fixed answer of the Tollgate benchmark's mock upstream. ` +
	`It is padded so that the whole response body is about five hundred bytes long, like a short real answer.",` +
	`"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":38,` +
	`"total_tokens":52,"prompt_tokens_details":{"cached_tokens":0}}}`

const chunkHead = `data: {"id":"chatcmpl-tollgatebench0000000000000000","object":"chat.completion.chunk","created":1764633600,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench000000","choices":[`

func main() {
	listen := flag.String("listen", "127.0.0.1:18400", "address to serve on")
	delay := flag.Duration("delay", 0, "fixed delay before every answer")
	chunks := flag.Int("chunks", 8, "content chunks per streamed answer")
	flag.Parse()

	var content, finish, usage []byte
	for i := 0; i < *chunks; i++ {
		content = fmt.Appendf(content, "%s{\"index\":0,\"delta\":{\"content\":\"word%d \"},\"logprobs\":null,\"finish_reason\":null}]}\n\n", chunkHead, i)
	}
	finish = []byte(chunkHead + `{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}` + "\n\n")
	usage = []byte(chunkHead + `],"usage":{"prompt_tokens":14,"completion_tokens":` + fmt.Sprint(*chunks) +
		`,"total_tokens":` + fmt.Sprint(14+*chunks) + "}}\n\n")
	done := []byte("data: [DONE]\n\n")
	body := []byte(completion)

	h := func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, `{"error":{"message":"POST only"}}`, http.StatusMethodNotAllowed)
			return
		}
		req, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return
		}
		if *delay > 0 {
			time.Sleep(*delay)
		}
		if !flagTrue(req, `"stream"`) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		f, _ := w.(http.Flusher)
		send := func(b []byte) {
			w.Write(b)
			if f != nil {
				f.Flush()
			}
		}
		// One write per chunk, as a real upstream produces them.
		for off := 0; off < len(content); {
			n := bytes.Index(content[off:], []byte("\n\n")) + 2
			send(content[off : off+n])
			off += n
		}
		send(finish)
		if flagTrue(req, `"include_usage"`) {
			send(usage)
		}
		send(done)
	}
	mux := http.NewServeMux()
	for _, p := range []string{"/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions"} {
		mux.HandleFunc(p, h)
	}
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// flagTrue reports whether the JSON body holds name followed by : true
// (whitespace allowed). Good enough for the benchmark's own request bodies.
func flagTrue(body []byte, name string) bool {
	i := bytes.Index(body, []byte(name))
	if i < 0 {
		return false
	}
	rest := strings.TrimLeft(string(body[i+len(name):min(len(body), i+len(name)+16)]), " \t\r\n:")
	return strings.HasPrefix(rest, "true")
}
