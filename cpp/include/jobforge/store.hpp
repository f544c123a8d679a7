// The store: the one place job state lives. Every backend (SQLite now, PostgreSQL later)
// implements this interface. Invariant: a Transition reaches the commit listener only after the
// change it describes is durable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "jobforge/job.hpp"
#include "jobforge/processor.hpp"

namespace jobforge {

// A job ready to insert: every option resolved by the engine.
struct NewJob {
  std::string id;
  std::string type;
  int priority;
  std::string payload_json;
  int max_attempts;
  int64_t timeout_ms;
  int64_t retry_delay_ms;
  std::string backoff;
  int64_t created_at;
  int64_t run_at;
  std::optional<std::string> parent_id;
  bool user_initiated;
  // Workflows. A job with any of these set goes through the store's workflow insert.
  std::string queue = "default";
  std::optional<std::string> unique_key;
  int64_t unique_for_ms = 0;
  std::vector<std::string> depends_on;
  bool run_if_dependency_fails = false;
  std::optional<std::string> batch_policy;  // a batch parent: "continue", "fail" or "fail_fast"
  int64_t batch_children = 0;

  bool plain() const noexcept {
    return queue == "default" && !unique_key && depends_on.empty() && !batch_policy;
  }
};

// What insert_jobs enforces besides the rows themselves.
struct InsertLimits {
  int64_t max_queue_size = 0;                      // every queue; 0: none
  std::vector<std::pair<std::string, int64_t>> max_queue_sizes;  // per queue, overrides
  int64_t limit_for(const std::string& queue) const {
    for (const auto& [name, n] : max_queue_sizes)
      if (name == queue) return n;
    return max_queue_size;
  }
};

// A cron schedule as stored.
struct Schedule {
  std::string name, cron, timezone = "UTC", type, payload_json = "null";
  std::optional<int> priority;
  std::string queue = "default";
  std::string misfire = "run_once";  // or "skip"
  int64_t next_fire_at = 0, last_fire_at = 0;
  std::string last_job_id;
  int64_t created_at = 0;
};

// One line of a job's log.
struct LogRecord {
  int64_t id = 0;  // set by the store, increasing
  std::string job_id;
  std::string job_type;  // not stored; for events
  int attempt = 0;
  int64_t at = 0;
  LogLevel level = LogLevel::info;
  std::string stage;
  std::string message;
  std::string fields_json;  // a JSON object's text, or empty
};

// A committed status change, for events and waiters.
struct Transition {
  std::string job_id;
  std::string job_type;
  Status from;
  Status to;
  int attempt = 0;
  int progress = 0;
  std::optional<std::string> result_json;
  std::optional<std::string> error;
  int64_t at = 0;
  int64_t run_ms = -1;  // a finished attempt's run time, when known (for statistics)
  // Log lines written at this point of the commit (from == to == running; no status change).
  std::shared_ptr<const std::vector<LogRecord>> log_lines = nullptr;
};
using CommitListener = std::function<void(std::vector<Transition>&)>;

struct ClaimRequest {
  std::string owner;  // worker id that will hold the lease
  int limit = 1;
  int64_t now = 0;
  int64_t lease_ms = 30'000;
  std::vector<std::string> types;  // only jobs of these types
  // true: the claim is committed before it returns (jobs are 'running' under a lease). false: the
  // jobs are held in memory by this store and stay 'queued' in the file until mark_started's
  // write or their end; only for a process alone on the file.
  bool durable = true;
  std::vector<std::string> queues = {};     // only jobs in these queues (empty: any)
  std::vector<std::string> exclude_queues = {};  // never jobs in these
  // Concurrency limits of this claim: at most max_running_type jobs of its one type, and at most
  // max_running_queue in its one queue, run at once (0: no limit). Durable claims count running
  // jobs in the store (every process); claims in memory count local_running_* (alone on the file).
  int max_running_type = 0, max_running_queue = 0;
  int local_running_type = 0, local_running_queue = 0;
  // A rate limit shared by every process: a token bucket in the store under rate_key.
  std::string rate_key = {};
  double rate_per_ms = 0, rate_burst = 1;
};

// A job claimed in memory has begun. Its running state is written with the next commit, unless
// its end arrives first: then only the end is written (the running state is coalesced away).
struct StartInfo {
  int64_t rowid = 0;
  std::string job_id;
  std::string job_type;
  std::string owner;
  int attempt = 1;
  int64_t started_at = 0;
  int64_t lease_expires_at = 0;
  // The claim's token: the row's queued_at when it was claimed. A job put back in the queue
  // since (retried by another process) has a newer one, so a stale holder's write misses it.
  int64_t queued_at = 0;
};

// The end of one attempt, decided by the engine. Only the lease holder may apply it, and only to
// the attempt that ended: `attempt` is a fencing token, and the end of a stale attempt (the job
// was taken back and claimed again since, even by the same owner) is refused, never applied.
// An end that cannot be written (disk full) is kept in order and retried until it commits.
struct Outcome {
  int64_t rowid = 0;
  std::string job_id;
  std::string job_type;
  std::string owner;
  Status to = Status::completed;   // completed | failed | cancelled | timeout | queued (retry)
  bool release = false;            // the attempt is not counted (it never ran, or shutdown)
  bool claimed_in_memory = false;  // the job may still be 'queued' in the store
  bool keep_start = false;         // write the pending start first (its log lines follow it)
  int64_t queued_at = 0;           // claim token of a job claimed in memory (see StartInfo)
  int attempt = 0;
  int64_t started_at = 0;  // when the attempt began (0: not known / not started)
  std::optional<std::string> result_json;
  std::optional<std::string> error;
  std::optional<std::string> error_detail;
  int64_t run_at = 0;  // for a retry
  int progress = 0;
  double progress_current = 0, progress_total = 0;
  std::string message;
  std::string stage;
  std::optional<std::string> outcome_json;
  int64_t at = 0;
};

struct ProgressUpdate {
  int64_t rowid;
  int progress;
  double current, total;
  std::string message;
  std::string stage;
  std::optional<std::string> outcome_json;
  int attempt = 0;  // the attempt reporting it (a fencing token; 0: any)
};

struct LogQuery {
  std::string job_id;
  LogLevel min_level = LogLevel::debug;
  int64_t after_id = 0;  // lines with a greater id (for tails)
  int64_t since = 0;     // Unix ms; lines at or after
  int limit = 1000;
  bool newest = false;  // the last `limit` lines (still returned oldest first)
};

struct WorkerInfo {
  std::string id;
  std::string hostname;
  int64_t pid = 0;
  std::string version;
  int64_t started_at = 0;
  int64_t heartbeat_at = 0;
  std::string state;
  std::string claim_mode = "durable";  // "memory" or "durable"
  std::string singleton_role;          // non-empty: at most one live worker with this role
};

// A job type a worker serves, with its processor's options, as the worker published it
// (docs/workers.md: producers that never registered the processor enqueue with these).
struct PublishedType {
  std::string worker_id;
  std::string type;
  std::string options_json;  // a JSON object: the processor's options that are set
  int64_t published_at = 0;  // when this worker began serving the type with these options
  int64_t refreshed_at = 0;  // its last publish (start, then every heartbeat)
};

enum class CancelResult { not_found, not_cancellable, cancelled, requested };

struct StoreWakeup {
  enum class Kind : uint8_t {
    jobs_due,          // jobs were inserted or queued again: idle dispatchers should claim
    cancel_requested,  // a running job of `worker_id` was asked to stop
    reconnected,       // notifications may have been missed: re-check everything
  };
  Kind kind = Kind::jobs_due;
  std::string worker_id;
};

class Store {
 public:
  virtual ~Store() = default;

  // Called after each commit with the transitions it made durable, on the thread that committed:
  // the store's writer thread, or a caller whose operation found the writer idle.
  virtual void set_commit_listener(CommitListener listener) = 0;
  // Called after a commit with the jobs whose start (mark_started) found them no longer queued:
  // another process cancelled them meanwhile.
  virtual void set_start_rejected_listener(std::function<void(const std::vector<int64_t>&)> l) = 0;

  // Durable on return. Throws ValidationError (e.g. unknown parent) and writes nothing then.
  virtual void insert(const std::vector<NewJob>& jobs) = 0;
  // Marks up to `limit` due queued jobs running under the owner's lease, in priority order
  // (1 first), then run_at, then insertion order. Durable on return.
  virtual std::vector<Job> claim(const ClaimRequest& request) = 0;
  // Applied in the next group commit; the caller does not wait.
  virtual void mark_started(StartInfo start) = 0;
  virtual void finish(Outcome outcome) = 0;
  // Jobs claimed in memory that never started: the store stops holding them (nothing is written).
  virtual void release(std::vector<int64_t> rowids) = 0;
  virtual void save_progress(std::vector<ProgressUpdate> updates) = 0;

  virtual CancelResult cancel(const std::string& job_id, int64_t now) = 0;
  // Cancels every queued job and requests cancellation of every running one; returns how many.
  virtual int64_t cancel_all(int64_t now, std::vector<std::string>* running_ids) = 0;
  virtual bool retry(const std::string& job_id, int64_t now) = 0;
  // Ids of the owner's running jobs whose cancellation was requested (e.g. by another process).
  virtual std::vector<std::string> cancel_requests(const std::string& owner) = 0;

  // Registers the worker and, in the same transaction, chooses its claim mode: "memory" when
  // allowed and no other live worker (per `is_dead`) is registered, else "durable". Returns it.
  // The PostgreSQL store always answers "durable": it is meant for many hosts.
  virtual std::string register_worker(const WorkerInfo& worker,
                                      const std::function<bool(const WorkerInfo&)>& is_dead,
                                      bool allow_memory) = 0;
  // Registers a worker that claims durably.
  std::string register_worker(const WorkerInfo& worker) {
    return register_worker(
        worker, [](const WorkerInfo&) { return false; }, false);
  }
  // Sets the worker's claim mode; "memory" only succeeds (true) while no other live worker exists.
  virtual bool set_claim_mode(const std::string& worker_id, const std::string& mode,
                              const std::function<bool(const WorkerInfo&)>& is_dead) = 0;
  // Refreshes the worker row and extends the leases of its running jobs.
  virtual void heartbeat(const std::string& worker_id, int64_t now, int64_t lease_ms) = 0;
  virtual void deregister_worker(const std::string& worker_id) = 0;
  virtual std::vector<WorkerInfo> workers() = 0;
  // Replaces the types the worker publishes with `types` (in one transaction). A type whose
  // options are unchanged keeps its published_at; every row gets refreshed_at = now. Rows of
  // workers that are no longer 'running' are deleted for the types this worker publishes (its
  // entry supersedes them); other types keep their last entry (the type stays known).
  virtual void publish_types(const std::string& worker_id, const std::vector<PublishedType>& types,
                             int64_t now) {
    (void)worker_id, (void)types, (void)now;  // stores without the table publish nothing
  }
  // Every published entry, live or not (the engine judges its worker), by type then worker.
  virtual std::vector<PublishedType> published_types() { return {}; }
  // Takes back running jobs whose owner is dead (per `is_dead`, asked for every running worker
  // but `self_id`; such rows are marked dead) or is not a running worker: a new attempt if any is
  // left, else failed. lease_expires_at is informational: a live owner keeps its jobs whatever
  // any clock says. Returns how many jobs were taken back.
  virtual int64_t recover_orphans(int64_t now, const std::string& self_id,
                                  const std::function<bool(const WorkerInfo&)>& is_dead) = 0;

  // Writes log lines asynchronously, in the writer's next commit. `drain` is called once, on the
  // writing thread, and returns the lines to write (so lines logged until then share the write).
  // The commit listener receives them, with ids, as a Transition carrying `log_lines`, in order
  // with the status changes of the same commit.
  virtual void append_logs(std::function<std::vector<LogRecord>()> drain) = 0;
  virtual std::vector<LogRecord> logs(const LogQuery& query) = 0;
  // Counts by type and status, windowed figures, queue depth and the oldest wait.
  virtual StatsDetail stats_detail(int64_t now, int64_t window_ms, int64_t rate_window_ms) = 0;
  // The database's own consistency check: "ok" or the problems found.
  virtual std::string integrity_check() = 0;

  virtual std::optional<Job> get(const std::string& job_id) = 0;
  virtual std::vector<Job> list(const JobQuery& query) = 0;
  virtual Stats stats() = 0;
  // The earliest run_at among queued jobs of these types, if any.
  virtual std::optional<int64_t> next_run_at(const std::vector<std::string>& types) = 0;

  // Wake-ups from other processes (PostgreSQL LISTEN/NOTIFY): called on the store's listener
  // thread. Stores without a notification channel never call it; the engine polls regardless.
  virtual void set_wakeup_listener(std::function<void(const StoreWakeup&)> listener) {
    (void)listener;
  }
  // "ok", or "degraded: <why>" while the store cannot reach its database (it keeps retrying).
  virtual std::string health() { return "ok"; }
  // ---- workflows (docs/workflows.md). Stores without them throw StoreError. ----
  // Inserts jobs with workflow options; returns, for each, the id stored: its own, or that of the
  // job holding its unique key. Throws QueueFull (nothing written) when a queue is full.
  virtual std::vector<std::string> insert_jobs(const std::vector<NewJob>& jobs,
                                               const InsertLimits& limits) {
    for (const auto& j : jobs)
      if (!j.plain() || limits.max_queue_size || !limits.max_queue_sizes.empty()) unsupported("workflows");
    insert(jobs);
    std::vector<std::string> ids;
    for (const auto& j : jobs) ids.push_back(j.id);
    return ids;
  }
  // The earliest run_at among queued jobs matching the claim's filters (types, queues).
  virtual std::optional<int64_t> next_run_at_filtered(const ClaimRequest& filter) {
    if (!filter.queues.empty() || !filter.exclude_queues.empty()) unsupported("queues");
    return next_run_at(filter.types);
  }
  virtual std::vector<Job> dependencies(const std::string& job_id) {
    (void)job_id;
    return {};
  }
  virtual void upsert_schedule(const Schedule& schedule) { (void)schedule; unsupported("schedules"); }
  virtual bool delete_schedule(const std::string& name) { (void)name; unsupported("schedules"); }
  virtual std::vector<Schedule> schedules() { return {}; }
  // Moves the schedule's next fire time from `expected_next` to `next` and inserts `job` (if any),
  // in one transaction; false (nothing written) when another process moved it first.
  virtual bool fire_schedule(const std::string& name, int64_t expected_next, int64_t next,
                             const std::optional<NewJob>& job) {
    (void)name, (void)expected_next, (void)next, (void)job;
    unsupported("schedules");
  }
  // Deletes up to `limit` finished jobs (and their logs and dependency rows) that ended before
  // `cutoff`; returns how many.
  virtual int64_t delete_finished(int64_t cutoff, int limit) {
    (void)cutoff, (void)limit;
    unsupported("retention");
  }

  // Waits until everything submitted so far is committed.
  virtual void flush() = 0;
  virtual void close() = 0;

 protected:
  [[noreturn]] static void unsupported(const char* what);
};

struct SqliteOptions {
  bool synchronous_full = false;  // FULL: durable against power loss; NORMAL: against crashes
  int busy_timeout_ms = 5'000;
  int max_batch_ops = 4'096;       // group commit: at most this many operations per transaction
  int group_commit_window_us = 0;  // wait this long for more operations before committing
  int readers = 4;
};

// Opens (creating and migrating as needed) a SQLite store. Throws StoreError.
std::unique_ptr<Store> open_sqlite_store(const std::string& path,
                                         const SqliteOptions& options = {});

// PostgreSQL (docs/postgresql.md). Each store holds 1 writer connection (group commit), 1 listener
// connection (LISTEN/NOTIFY) and up to `pool_size` connections for claims and reads.
struct PostgresOptions {
  int pool_size = 4;
  int max_batch_ops = 4'096;  // group commit: at most this many operations per transaction
  int connect_timeout_s = 5;
  // While the server is unreachable, a caller waiting for a write (enqueue, cancel) gets a
  // StoreError after this long; background writes (ends of jobs, heartbeats) are kept and retried
  // until the server is back.
  int64_t unavailable_timeout_ms = 30'000;
  int64_t reconnect_max_delay_ms = 2'000;  // backoff between reconnection attempts, doubling
};

// Opens (creating and migrating as needed) a PostgreSQL store from a libpq URL
// ("postgresql://user@host:port/db?options=..."). Throws StoreError.
std::unique_ptr<Store> open_postgres_store(const std::string& url,
                                           const PostgresOptions& options = {});

// True for "postgresql://..." and "postgres://..." (a PostgreSQL store), false for a file path.
bool is_postgres_url(const std::string& path) noexcept;

// The path for display: in a PostgreSQL URL, the password of the user info and the values of
// its password= and sslpassword= parameters become "***"; a file path is returned unchanged.
std::string redact_url(const std::string& path);

// The store a path names: PostgreSQL for a postgres URL, else a SQLite file.
std::unique_ptr<Store> open_store(const std::string& path, const SqliteOptions& sqlite = {},
                                  const PostgresOptions& postgres = {});

}  // namespace jobforge
