// Package spend is the proxy's spend outbox: every completed request's
// spend record is made durable in a bbolt file before it is shipped to the
// control plane, so that nothing is lost on a restart and nothing is
// counted twice.
//
// # Architecture
//
// Record (the proxy's OnUsage hook) prices an outcome and queues it in
// memory; one writer goroutine commits the queue to bbolt in groups (group
// commit: whatever queued while the previous commit was fsyncing, or for one
// Window after a record reached an idle outbox, at most MaxGroup records,
// one fsynced transaction per group). The commit assigns each record the
// next sequence number of this outbox. The file is its own (by default the
// cache path plus ".spend"), so spend commits never wait behind a snapshot
// install in the cache, and a rebuilt cache never takes spend with it.
//
// The sync client reads committed records in sequence order (Batch), sends
// them, and calls Ack when the control plane confirms; Ack deletes them.
// Sequence numbers are scoped by the outbox id, a random id chosen when the
// file is created: the control plane keeps a high-water mark per (proxy id,
// outbox id), so a batch sent twice (an ack lost with the stream) is applied
// once, and a proxy whose file was lost starts a fresh numbering that is not
// mistaken for a replay.
//
// # Failure modes
//
//   - SIGKILL or a crash: committed records survive (bbolt fsyncs each
//     commit) and the restarted proxy ships them. What is lost is what was
//     queued but not committed: the records of the last Window (20 ms by
//     default) plus the commit in progress, at most one group (see README,
//     "Spend"; deploy/e2e TestSpendLostOnSIGKILL measures it).
//   - SIGTERM: the proxy stops taking requests, Close commits the queue, and
//     the proxy waits (bounded) until the control plane acked everything.
//   - Control plane unreachable: records accumulate on disk and ship when it
//     is back. A failed commit keeps the records queued and is retried.
//
// # Thread safety
//
// Every method is safe for concurrent use.
package spend
