// The engine: the public C++ facade. It resolves options, validates input, and runs the
// dispatcher, the worker threads and maintenance over a Store; events leave through the EventBus.
// Invariant: a job runs only while this process holds its lease, and its end is decided once,
// by `decide_outcome`.
#pragma once

#include <chrono>
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
};

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

}  // namespace jobforge
