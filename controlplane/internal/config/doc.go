// Package config loads a LiteLLM-style proxy config YAML into the models and settings the control plane stores.
package config
