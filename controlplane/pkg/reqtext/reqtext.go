// Package reqtext checks that the text a request carries in its path and
// query is something a store can hold: valid UTF-8, no control characters
// (NUL above all: Postgres refuses it), of a sane length. Handlers that take
// ids from the URL answer 404 for anything else instead of failing later
// with a 5xx. Both planes use it (the SaaS team API on the control plane and
// on the proxies).
package reqtext

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// MaxLen bounds the path and the raw query.
const MaxLen = 4096

// Sane reports whether r's path and query are valid UTF-8 of at most MaxLen
// bytes each, without control characters, also once the query is decoded.
func Sane(r *http.Request) bool {
	for _, v := range []string{r.URL.Path, r.URL.RawQuery} {
		if len(v) > MaxLen || !utf8.ValidString(v) {
			return false
		}
		for _, c := range v {
			if c < 0x20 || c == 0x7f {
				return false
			}
		}
	}
	q, err := url.QueryUnescape(r.URL.RawQuery)
	return err == nil && utf8.ValidString(q) && !strings.ContainsRune(q, 0)
}
