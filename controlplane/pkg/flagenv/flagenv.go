// Package flagenv parses a flag set after applying TOLLGATE_<FLAG>
// environment variables, so both binaries read their flags the same way.
package flagenv

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Parse sets every flag from TOLLGATE_<NAME> (upper case, dashes as
// underscores) when that variable exists, then parses args, so a flag on
// the command line wins over its environment variable.
func Parse(fs *flag.FlagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := "TOLLGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s: %w", env, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	return fs.Parse(args)
}
