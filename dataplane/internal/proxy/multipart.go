package proxy

import (
	"bytes"
	"mime"
	"net/http"
	"strings"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

// maxFormFields bounds the text fields of a multipart body that the
// decision reads (an audio upload has a handful).
const maxFormFields = 64

var (
	rejMultipart = enforce.New(enforce.BadRequest, http.StatusBadRequest, enforce.TypeInvalid,
		"/audio/transcriptions takes a multipart/form-data body with a model field and a file", "")
	crlf = []byte("\r\n")
)

// decideMultipart decides a multipart/form-data request (/audio/
// transcriptions): its text fields become a JSON object that the decision
// reads like any body (model, enforced params as field names), and the
// original bytes are forwarded with only the model field's value replaced.
func (h *handler) decideMultipart(c *call, raw []byte, contentType string) *enforce.Rejection {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return rejMultipart
	}
	fields, model, ok := formFields(raw, params["boundary"])
	if !ok || !model.Present() {
		return rejMultipart
	}
	if rej := h.decide(c, fields); rej != nil {
		return rej
	}
	name := []byte(c.tg.pt.UpstreamModel()) // fresh: segments never point into pooled memory
	c.nseg, c.length = 0, 0
	c.addSeg(raw[:model.Start])
	c.addSeg(name)
	c.addSeg(raw[model.End:])
	c.pl.ContentType = contentType
	c.stream = false
	return nil
}

// formFields returns the text fields of a multipart body as a JSON object
// (file parts are skipped) and where the model field's value is in raw.
func formFields(raw []byte, boundary string) (fields []byte, model enforce.Span, ok bool) {
	delim := []byte("--" + boundary)
	i := bytes.Index(raw, delim)
	if i < 0 {
		return nil, model, false
	}
	fields = append(fields, '{')
	n := 0
	pos := i + len(delim)
	for {
		if bytes.HasPrefix(raw[pos:], []byte("--")) {
			break // the closing delimiter
		}
		if !bytes.HasPrefix(raw[pos:], crlf) {
			return nil, model, false
		}
		pos += 2
		hdrEnd := bytes.Index(raw[pos:], []byte("\r\n\r\n"))
		if hdrEnd < 0 {
			return nil, model, false
		}
		headers := string(raw[pos : pos+hdrEnd])
		valStart := pos + hdrEnd + 4
		next := bytes.Index(raw[valStart:], append([]byte("\r\n"), delim...))
		if next < 0 {
			return nil, model, false
		}
		valEnd := valStart + next
		name, file := partName(headers)
		if name != "" && !file {
			if n++; n > maxFormFields {
				return nil, model, false
			}
			if name == "model" {
				if model.Present() {
					return nil, model, false // two models: which one was authorized?
				}
				model = enforce.Span{Start: valStart, End: valEnd}
			}
			if len(fields) > 1 {
				fields = append(fields, ',')
			}
			fields = enforce.AppendString(fields, name)
			fields = append(fields, ':')
			fields = enforce.AppendString(fields, string(raw[valStart:valEnd]))
		}
		pos = valEnd + 2 + len(delim)
	}
	return append(fields, '}'), model, true
}

// partName reads a part's form field name and whether it is a file.
func partName(headers string) (name string, file bool) {
	for _, line := range strings.Split(headers, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "Content-Disposition") {
			continue
		}
		_, params, err := mime.ParseMediaType(strings.TrimSpace(v))
		if err != nil {
			return "", false
		}
		_, file = params["filename"]
		return params["name"], file
	}
	return "", false
}
