package events

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

// Environment variables read when general_settings leaves a field unset.
const (
	EnvWebhookURL    = "WEBHOOK_URL"             // LiteLLM's name
	EnvWebhookSecret = "TOLLGATE_WEBHOOK_SECRET" // HMAC-SHA256 signing secret
	EnvGracePeriod   = "TOLLGATE_KEY_ROTATION_GRACE_PERIOD"
)

// DefaultGracePeriod is how long an auto-rotated key's old secret keeps
// working when key_rotation_grace_period is unset.
const DefaultGracePeriod = 24 * time.Hour

// Config is the webhook configuration, read from general_settings (then the
// environment) before every round, so that changes apply without a restart:
//
//	general_settings:
//	  alerting: ["webhook"]                      # turns the event webhook on
//	  alerting_args:
//	    webhook_url: https://hooks.example/tg    # else $WEBHOOK_URL
//	  webhook_secret: os.environ/TG_HOOK_SECRET  # else $TOLLGATE_WEBHOOK_SECRET
//	  key_rotation_grace_period: 24h             # else $TOLLGATE_KEY_ROTATION_GRACE_PERIOD, default 24h
type Config struct {
	Enabled bool // alerting lists "webhook"
	URL     string
	Secret  string
	Grace   time.Duration
	// Problem explains why an enabled webhook cannot deliver ("" when it can).
	Problem string
}

// Ready reports whether events can be delivered (and keys rotated).
func (c Config) Ready() bool { return c.Enabled && c.Problem == "" }

// LoadConfig reads the configuration from the store's general_settings and
// the environment (getenv, os.Getenv when nil).
func LoadConfig(ctx context.Context, r store.Reader, getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	st, err := r.GetSettings(ctx)
	if err != nil {
		return Config{}, err
	}
	g, err := settings.Parse(st.GeneralSettings)
	if err != nil {
		// Stored settings were validated when written; a parse error here
		// means the webhook settings cannot be trusted.
		return Config{Problem: "general_settings: " + err.Error()}, nil
	}
	return configFrom(g, getenv), nil
}

func configFrom(g settings.General, getenv func(string) string) Config {
	c := Config{Enabled: slices.Contains(g.Alerting, "webhook"), Grace: DefaultGracePeriod}
	var args struct {
		WebhookURL string `json:"webhook_url"`
	}
	if raw, ok := g.Extra["alerting_args"]; ok {
		_ = json.Unmarshal(raw, &args)
	}
	c.URL = resolve(args.WebhookURL, getenv)
	if c.URL == "" {
		c.URL = getenv(EnvWebhookURL)
	}
	ref := extraString(g, "webhook_secret")
	literal := ref != "" && !SecretReference(ref)
	if !literal {
		c.Secret = resolve(ref, getenv)
	}
	if c.Secret == "" {
		c.Secret = getenv(EnvWebhookSecret)
	}
	grace := extraString(g, "key_rotation_grace_period")
	if grace == "" {
		grace = getenv(EnvGracePeriod)
	}
	if grace != "" {
		d, err := duration.Parse(grace)
		if err != nil {
			c.Problem = "key_rotation_grace_period: " + err.Error()
			return c
		}
		c.Grace = d.AddTo(time.Unix(0, 0)).Sub(time.Unix(0, 0))
	}
	if !c.Enabled {
		return c
	}
	if u, err := url.Parse(c.URL); c.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.Problem = "alerting lists \"webhook\" but no http(s) URL is set (general_settings.alerting_args.webhook_url or " + EnvWebhookURL + ")"
		return c
	}
	if literal {
		c.Problem = "general_settings.webhook_secret must be an os.environ/NAME reference, not the secret itself"
		return c
	}
	if c.Secret == "" {
		c.Problem = "alerting lists \"webhook\" but no signing secret is set (general_settings.webhook_secret or " + EnvWebhookSecret + ")"
	}
	return c
}

func extraString(g settings.General, name string) string {
	var s string
	if raw, ok := g.Extra[name]; ok {
		_ = json.Unmarshal(raw, &s)
	}
	return s
}

// resolve expands LiteLLM's "os.environ/NAME" references.
func resolve(v string, getenv func(string) string) string {
	if name, ok := strings.CutPrefix(v, "os.environ/"); ok {
		return getenv(name)
	}
	return v
}

// SecretReference reports whether v is an "os.environ/NAME" reference (the
// only form general_settings.webhook_secret takes: settings are stored in
// the database and returned by GET /settings).
func SecretReference(v string) bool {
	name, ok := strings.CutPrefix(v, "os.environ/")
	return ok && name != ""
}
