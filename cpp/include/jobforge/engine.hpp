// The engine: the public C++ facade. It resolves options, validates input, and runs the
// dispatcher, the worker threads and maintenance over a Store; events leave through the EventBus.
// Invariant: a job runs only while this process holds its lease, and its end is decided once,
// by `decide_outcome`.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "jobforge/events.hpp"
#include "jobforge/job.hpp"
#include "jobforge/processor.hpp"
#include "jobforge/store.hpp"

namespace jobforge {

struct EngineConfig {
  // A SQLite file, or a PostgreSQL URL ("postgresql://user@host/db"): see docs/postgresql.md.
  std::string path = "jobs.db";
  int workers = 4;
  // Jobs claimed ahead of a free worker. A claimed job is `running` in the store (it holds a
  // lease), so 0 keeps `running` truthful and priorities exact; more trades that for throughput.
  int prefetch = 0;
  int64_t default_timeout_ms = 300'000;
  int default_max_attempts = 3;
  int64_t default_retry_delay_ms = 1'000;
  int default_priority = priority::normal;
  bool allow_unknown_types = false;  // producer-only processes may enqueue any type
  // The native processor "exec" runs any command as this process's user: registered only when
  // the application opts in (docs/security.md). Its commands get a minimal environment unless
  // exec_inherit_env (or the payload's inherit_env) passes the whole environment on.
  bool allow_exec = false;
  bool exec_inherit_env = false;
  // Alone on the file, claim jobs in memory and write only their end (and their running state
  // once they outlast a commit). Switched off automatically while other workers share the file.
  bool claim_in_memory = true;
  // Non-empty: at most one started engine per role on the file (enforced by a unique index);
  // start() of a second one throws SingletonTaken.
  std::string singleton_role;
  // A processor still running this long after its timeout or cancellation is interrupted
  // (Processor::interrupt: for Python, an asynchronous JobCancelled in its thread).
  int64_t interrupt_grace_ms = 1'000;
  size_t max_payload_bytes = 16u << 20;
  int64_t lease_ms = 30'000;  // a claimed job's lease; heartbeats renew it
  int64_t heartbeat_ms = 5'000;
  int64_t poll_ms = 250;  // idle dispatcher re-checks the store (other processes)
  // Progress is always current in memory (get() shows it). It reaches the store when it moved
  // progress_persist_percent points or entered a new stage, or progress_persist_ms after an
  // unwritten change, checked every progress_flush_ms; and always with the job's end.
  int64_t progress_flush_ms = 1'000;
  int64_t progress_persist_ms = 30'000;
  int progress_persist_percent = 10;
  int64_t progress_event_ms = 100;  // progress events at most this often per job
  // Statistics: durations and error rates over stats_window_ms, throughput over stats_rate_ms.
  int64_t stats_window_ms = 3'600'000;
  int64_t stats_rate_ms = 60'000;
  SqliteOptions sqlite;
  PostgresOptions postgres;
  // Workflows (docs/workflows.md).
  std::vector<std::string> queues;  // serve only jobs in these queues (empty: every queue)
  int64_t max_queue_size = 0;       // queued jobs per queue before enqueue raises QueueFull; 0: none
  // A schedule whose fire time passed more than this long ago was missed (nothing ran): its
  // misfire policy decides ("run_once": one job now; "skip": none).
  int64_t misfire_grace_ms = 60'000;
  // > 0: a schedule "jobforge.cleanup" enqueues the maintenance job `cleanup` (priority 10) every
  // cleanup_interval_ms, deleting finished jobs and their logs older than this.
  int64_t retention_ms = 0;
  int64_t cleanup_interval_ms = 3'600'000;
  int cleanup_batch = 500;  // rows deleted per transaction, so the writer is never held long
};

// A rate such as "10/s": `count` starts per `period_ms`. Throws ValidationError naming "rate".
struct RateLimit {
  double count = 0;
  int64_t period_ms = 1000;
  static RateLimit parse(std::string_view text);
  double per_ms() const noexcept { return count / static_cast<double>(period_ms); }
};

// How a batch parent ends: "continue" (completes with a summary whatever its children did),
// "fail" (fails at the end if any child failed or timed out), "fail_fast" (fails at the first
// such child and cancels the unfinished ones).
struct BatchSpec {
  JobSpec parent;
  std::vector<JobSpec> children;
  std::string on_child_failure = "continue";
};

// A processor's progress, for run_now's caller (e.g. a terminal progress bar).
using DirectProgress = std::function<void(double current, double total, const std::string& message)>;

class RunningJob;

class Engine {
 public:
  explicit Engine(EngineConfig config);
  ~Engine();  // stop(true)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineConfig& config() const noexcept;
  const std::string& worker_id() const noexcept;

  // Registers (or replaces) the processor of a job type. Allowed before and after start().
  void register_processor(const std::string& type, std::shared_ptr<Processor> processor,
                          ProcessorOptions options = {});
  bool has_processor(const std::string& type) const;
  std::vector<std::string> processor_types() const;

  void start();
  // wait = true: running jobs finish; false: they are asked to stop and go back to the queue.
  // Jobs claimed but not started go back to the queue either way.
  void stop(bool wait = true);
  bool running() const noexcept;

  // Durable on return. Throws ValidationError / UnknownJobType and writes nothing on bad input.
  Job enqueue(const JobSpec& spec);
  std::vector<Job> enqueue_many(const std::vector<JobSpec>& specs);

  std::optional<Job> get(const std::string& job_id);
  std::vector<Job> jobs(const JobQuery& query);
  std::vector<Job> active(int limit = 1000);
  Stats stats();
  StatsDetail stats_detail();
  // Lines of a job's log. Throws ValidationError for an unknown job id.
  std::vector<LogRecord> logs(const LogQuery& query);
  std::vector<WorkerInfo> workers();
  // The types workers publish with their processors' options (docs/workers.md), every entry.
  std::vector<PublishedType> published_types();
  // Of these types, those with due queued jobs that no live worker publishes (serves).
  std::vector<std::string> unserved_types(const std::vector<std::string>& types);
  std::string integrity_check();
  // Figures of this engine: jobs claimed and running here, progress writes, log lines, events.
  struct LocalStats {
    int workers = 0;
    int64_t claimed = 0, running = 0;
    uint64_t progress_writes = 0, log_lines = 0;
    uint64_t events_queued = 0, events_coalesced = 0, events_dropped = 0;
  };
  LocalStats local_stats();

  bool cancel(const std::string& job_id);
  bool retry(const std::string& job_id);
  int64_t abort_all();

  // Waits until the job is final; nullopt on timeout. Throws ValidationError for an unknown id.
  std::optional<Job> wait(const std::string& job_id,
                          std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  // ---- workflows (docs/workflows.md) ----
  // The parent and its children in one transaction; returns the parent then the children.
  std::vector<Job> enqueue_batch(const BatchSpec& batch);
  // Jobs this one depends on (with their results).
  std::vector<Job> dependencies(const std::string& job_id);
  // Per-queue limits: max_concurrent (0: none) across every process; max_size (0: the engine's
  // max_queue_size) for enqueue.
  void set_queue_limits(const std::string& queue, int max_concurrent, int64_t max_size);
  // Creates or replaces a cron schedule; returns it (with its next fire time). Bad cron text,
  // time zone or misfire policy throws ValidationError.
  Schedule schedule(Schedule schedule);
  bool unschedule(const std::string& name);
  std::vector<Schedule> schedules();
  // Fires the schedules that are due now (maintenance does this on its own); returns jobs made.
  int fire_due_schedules();
  // Deletes finished jobs (and their logs) that ended more than older_than_ms ago, in
  // transactions of config().cleanup_batch rows; returns how many.
  int64_t cleanup(int64_t older_than_ms, const Context* ctx = nullptr);
  // Runs the type's processor now, in the calling thread, without the queue and without a row in
  // the store; returns its result JSON or throws its error (ProcessorFailure, JobCancelled...).
  std::string run_now(const std::string& type, const std::string& payload_json,
                      DirectProgress progress = nullptr);
  // The context run_now gives a processor, for callers that run the processor themselves.
  std::shared_ptr<Context> direct_context(const std::string& type, DirectProgress progress = nullptr);

  EventBus& events() noexcept;
  Store& store() noexcept;

 private:
  friend class RunningJob;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The native processors every engine has: "noop" (returns null) and "sleep" (payload
// {"seconds": s}; sleeps in slices, reports progress, honours cancellation).
std::shared_ptr<Processor> make_noop_processor();
std::shared_ptr<Processor> make_sleep_processor();
// "cleanup": payload {"older_than_ms": n}; deletes finished jobs through Engine::cleanup.
std::shared_ptr<Processor> make_cleanup_processor(Engine& engine);

}  // namespace jobforge
