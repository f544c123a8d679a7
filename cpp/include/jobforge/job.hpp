// The job model: what enqueue takes (JobSpec), what the store returns (Job), the status lifecycle.
// Invariant: every status change goes through `can_transition`; the table in job.cpp is the only
// place that says which changes are legal.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace jobforge {

enum class Status : uint8_t { created, queued, running, completed, failed, cancelled, timeout };
inline constexpr int kStatusCount = 7;

std::string_view to_string(Status s) noexcept;
std::optional<Status> parse_status(std::string_view s) noexcept;
bool is_final(Status s) noexcept;
// The lifecycle: created → queued → running → completed | failed | cancelled | timeout, plus
// running → queued (retry, recovery), queued|created → cancelled, final (not completed) → queued.
bool can_transition(Status from, Status to) noexcept;
// Every status from which `to` may be reached, for guards in SQL (`status IN (...)`).
std::vector<Status> statuses_leading_to(Status to);

// Named priority levels: 1 is the highest, 10 the lowest.
namespace priority {
inline constexpr int urgent = 1, high = 3, normal = 5, low = 7, maintenance = 10;
inline constexpr int min = 1, max = 10;
}  // namespace priority

// How long a failed attempt waits before the next: the one place for the backoff formulas.
// base_ms is the job's retry_delay. fixed: base; linear: base × attempt; exponential:
// base × factor^(attempt−1); then capped at max_ms (when > 0) and spread by ±jitter (0..1).
struct Backoff {
  enum class Kind : uint8_t { fixed, linear, exponential };
  Kind kind = Kind::fixed;
  double factor = 2.0;
  int64_t max_ms = 0;
  double jitter = 0.0;

  // `attempt` is the attempt that just failed (1 for the first). `unit` in [0, 1) picks the jitter.
  int64_t delay_ms(int64_t base_ms, int attempt, double unit = 0.5) const noexcept;
  // Text form stored with the job: "fixed", "linear" or "exponential:<factor>:<max_ms>:<jitter>".
  std::string to_string() const;
  // Throws ValidationError naming the field "backoff".
  static Backoff parse(std::string_view text);
};

// What the caller asks for. Unset optionals take the processor's defaults, then the engine's.
struct JobSpec {
  std::string type;
  std::string payload_json = "null";
  std::optional<int> priority;
  std::optional<int> max_attempts;
  std::optional<int64_t> timeout_ms;
  std::optional<int64_t> retry_delay_ms;
  std::optional<std::string> backoff;  // Backoff::to_string() form; default: fixed
  int64_t delay_ms = 0;
  std::optional<std::string> parent_id;
  bool user_initiated = true;
  // Workflows (docs/workflows.md).
  std::string queue = "default";
  // While a job with this key is queued or running (or ended less than unique_for_ms ago),
  // enqueue returns that job instead of a new one.
  std::optional<std::string> unique_key;
  int64_t unique_for_ms = 0;
  // Runs once these jobs have completed; ids, or indexes of earlier specs of the same enqueue_many.
  std::vector<std::string> depends_on;
  std::vector<size_t> depends_on_index;
  bool run_if_dependency_fails = false;  // false: a failed/cancelled dependency cancels this job
};

// A job as stored. Timestamps are Unix milliseconds; 0 means "not set".
struct Job {
  int64_t rowid = 0;
  std::string id;
  std::string type;
  Status status = Status::created;
  int priority = priority::normal;
  std::string payload_json = "null";
  int progress = 0;  // 0..100
  double progress_current = 0;
  double progress_total = 0;  // 0: unknown total
  std::string message;
  std::optional<std::string> result_json;
  std::optional<std::string> error;
  std::optional<std::string> error_detail;
  int attempts = 0;
  int max_attempts = 3;
  int64_t timeout_ms = 300'000;
  int64_t retry_delay_ms = 1'000;
  std::string backoff = "fixed";
  std::optional<std::string> parent_id;
  bool user_initiated = true;
  bool cancel_requested = false;
  int64_t created_at = 0;
  int64_t queued_at = 0;
  int64_t started_at = 0;
  int64_t completed_at = 0;
  int64_t run_at = 0;
  int64_t timeout_at = 0;
  std::string lease_owner;
  int64_t lease_expires_at = 0;
  std::string queue = "default";
  std::optional<std::string> unique_key;
  std::string stage;                        // the current stage's name, "" for none
  std::optional<std::string> outcome_json;  // {"updates": 3, ...}: the sums of ctx.count
  // Only for a job running in this process (from recent progress), else 0.
  double rate = 0;      // progress units per second
  int64_t eta_ms = -1;  // estimated time left; -1: unknown
};

// Counts by status, kept by the store in the same transactions that change statuses.
struct Stats {
  int64_t total = 0;
  int64_t by_status[kStatusCount] = {};
  int64_t count(Status s) const noexcept { return by_status[static_cast<int>(s)]; }
};

// Figures of one job type: counts by status (now), and over a recent window: run times (mean and
// 95th percentile, from a log-scale histogram: within ~10%), failures among finished attempts, and
// throughput.
struct TypeStats {
  std::string type;
  int64_t by_status[kStatusCount] = {};
  int64_t count(Status s) const noexcept { return by_status[static_cast<int>(s)]; }
  int64_t finished = 0, completed = 0, failed = 0, cancelled = 0, timed_out = 0, retried = 0;
  int64_t runs = 0;          // attempts with a known run time in the window
  double mean_run_ms = 0, p50_run_ms = 0, p95_run_ms = 0;
  double error_rate = 0;     // (failed + timeout + retried) / attempts ended, in the window
  double created_per_s = 0, completed_per_s = 0;  // over the rate window
};

struct StatsDetail {
  Stats totals;
  std::vector<TypeStats> types;  // sorted by type
  int64_t queued = 0;            // waiting, due or not
  int64_t due = 0;               // queued and due now
  int64_t oldest_due_age_ms = 0; // how long the oldest due job has waited (0: none)
  int64_t window_ms = 0, rate_window_ms = 0;
};

// Filters for listing jobs, newest first.
struct JobQuery {
  std::optional<Status> status;
  std::vector<Status> statuses;  // alternative to `status`: any of these
  std::optional<std::string> type;
  std::optional<std::string> parent_id;
  int limit = 100;
  int offset = 0;
};

// Unix ms by the wall clock, minus any step of it (over a second) since this process began: a
// running process goes on from where its clock was (see job.cpp).
int64_t now_ms() noexcept;
// Test only: shifts the wall clock now_ms() reads by `offset_ms` from now on, as a clock step of
// this process would (the environment variable JOBFORGE_TEST_CLOCK_OFFSET_MS sets it at start).
void set_test_clock_offset_ms(int64_t offset_ms) noexcept;
// A 36-character UUID, version 7 (time-ordered), so inserts append to the primary key's B-tree.
std::string new_job_id();

// How many times this process's ancestry forked since the library loaded: 0 in the process
// that loaded it, bumped in the child of every fork() (a pthread_atfork handler). Something made
// before a fork (an engine, a connection) compares it to tell that it now sits in a child.
uint64_t fork_generation() noexcept;

}  // namespace jobforge
