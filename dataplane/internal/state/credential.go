package state

import (
	"fmt"
	"os"
	"strings"
)

// envPrefix marks a model api_key that names an environment variable of
// the proxy ("os.environ/OPENAI_API_KEY"), as LiteLLM configs do.
const envPrefix = "os.environ/"

// ResolveCredential returns the upstream credential a model's APIKey
// stands for: the value of the named environment variable for an
// "os.environ/NAME" reference, else the literal itself. An unset variable is
// an error naming the variable (never a value).
func ResolveCredential(apiKey string) (string, error) {
	name, ok := strings.CutPrefix(apiKey, envPrefix)
	if !ok {
		return apiKey, nil
	}
	v, set := os.LookupEnv(name)
	if !set {
		return "", fmt.Errorf("state: model credential: environment variable %q is not set", name)
	}
	return v, nil
}
