// The processor interface: what a job type's handler implements, native or Python.
// Invariant: a processor sees only its Context and its payload; it never touches the store.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "jobforge/errors.hpp"

namespace jobforge {

// Severity of a job log line.
enum class LogLevel : uint8_t { debug = 10, info = 20, warning = 30, error = 40 };
inline std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warning: return "warning";
    case LogLevel::error: return "error";
  }
  return "info";
}
inline std::optional<LogLevel> parse_log_level(std::string_view name) noexcept {
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warning" || name == "warn") return LogLevel::warning;
  if (name == "error") return LogLevel::error;
  return std::nullopt;
}

// Why a running job was asked to stop.
enum class StopReason : uint8_t { none, cancelled, timeout, shutdown };

// What a processor sees of its job while it runs. Implemented by the engine; every method is
// safe to call from the processor's thread and cheap enough for tight loops.
// Contexts are shared (enable_shared_from_this) so a binding may keep one alive after its job.
class Context : public std::enable_shared_from_this<Context> {
 public:
  virtual ~Context() = default;
  virtual const std::string& job_id() const noexcept = 0;
  virtual const std::string& job_type() const noexcept = 0;
  virtual int attempt() const noexcept = 0;  // 1 on the first run
  virtual StopReason stop_reason() const noexcept = 0;
  bool cancelled() const noexcept { return stop_reason() != StopReason::none; }
  // Throws JobCancelled when the job was cancelled, timed out or the engine is shutting down.
  void check_cancelled() const {
    switch (stop_reason()) {
      case StopReason::none: return;
      case StopReason::cancelled: throw JobCancelled("job was cancelled");
      case StopReason::timeout: throw JobCancelled("job timed out");
      case StopReason::shutdown: throw JobCancelled("engine is shutting down");
    }
  }
  // Reports progress: `current` units done of `total` (total <= 0: unknown, the job shows a
  // count such as "1,250 processed" and no percentage). An empty message keeps the previous one.
  virtual void progress(double current, double total = 0, std::string_view message = {}) = 0;
  // The same, inside the named stage: entering it if it is not the current one.
  virtual void progress(double current, double total, std::string_view message,
                        std::string_view stage) = 0;
  // Starts a named stage ("Phase 2: processing"): current goes back to 0 with this total.
  virtual void stage(std::string_view name, double total = 0) = 0;
  // Adds n to current, keeping total, message and stage.
  virtual void increment(double n = 1) = 0;
  // Appends a line to the job's log (stored in batches; a `job-log` event for live tails).
  // fields_json: a JSON object's text with context (key: value), or empty.
  virtual void log(LogLevel level, std::string_view message, std::string_view fields_json = {}) = 0;
  // Adds n to the outcome counter `key` ("updates", "inserts", "errors"...); the sums are stored
  // with the job as its outcome summary.
  virtual void count(std::string_view key, int64_t n = 1) = 0;
  // The results of the jobs this one depends on (depends_on), as a JSON object {id: result}.
  virtual std::string dependency_results_json() { return "{}"; }
};

// Something a processor must hold to run, such as the Python GIL. A worker thread that runs
// several jobs behind the same gate in a row enters it once for all of them (for a short while),
// so a flood of small Python jobs costs one GIL acquisition per batch, not one per job.
class ExecutionGate {
 public:
  virtual ~ExecutionGate() = default;
  virtual void enter() = 0;
  virtual void leave() = 0;
};

// A job type's handler. run() is called once per attempt on a worker thread; it returns the
// result as JSON text ("null" for none) or throws: ProcessorFailure or any std::exception fails
// the attempt, JobCancelled ends it as cancelled/timeout.
class Processor {
 public:
  virtual ~Processor() = default;
  virtual std::string run(Context& ctx, const std::string& payload_json) = 0;
  // Checks a payload when a job is enqueued, before anything is written: throws ValidationError
  // naming the field and the value. The default accepts every payload.
  virtual void validate(const std::string& payload_json) const { (void)payload_json; }
  // The gate run() needs, if any; the engine enters it before calling run().
  virtual ExecutionGate* gate() noexcept { return nullptr; }
  // Called once, from another thread, when a run() of `ctx` has not returned some time after its
  // job was asked to stop (timeout, cancel). A processor that can be interrupted does so here;
  // the default does nothing (native processors are expected to poll ctx.cancelled()).
  virtual void interrupt(Context& ctx) { (void)ctx; }
};

// Defaults a processor gives its jobs; a job's own options override them.
struct ProcessorOptions {
  std::optional<int64_t> timeout_ms;
  std::optional<int> max_attempts;
  std::optional<int64_t> retry_delay_ms;
  std::optional<std::string> backoff;
  std::optional<int> priority;
  // Limits across every process on the store (docs/workflows.md): at most this many jobs of the
  // type run at once, and at most `rate` start ("10/s", "100/m", "5/h", "1/30s").
  std::optional<int> max_concurrent;
  std::optional<std::string> rate;
};

}  // namespace jobforge
