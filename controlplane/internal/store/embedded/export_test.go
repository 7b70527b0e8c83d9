package embedded

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// AddMigrationForTest appends a schema step for the duration of the test,
// as a future release would.
func AddMigrationForTest(t *testing.T, step func(*bolt.Tx) error) {
	saved := migrations
	migrations = append(migrations[:len(migrations):len(migrations)], step)
	t.Cleanup(func() { migrations = saved })
}

// SchemaVersionForTest is the version this binary writes.
func SchemaVersionForTest() int { return len(migrations) }

// Bucket names the tests poke at.
var (
	BucketMeta        = bucketMeta
	MetaSchemaVersion = metaSchemaVersion
)
