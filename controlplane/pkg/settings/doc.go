// Package settings is the typed, validated view of LiteLLM's general_settings object that both planes read.
package settings
