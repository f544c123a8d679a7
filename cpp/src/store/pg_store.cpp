// PgStore: the store for many hosts. One writer connection owned by a writer thread that
// group-commits every queued operation (ends of jobs and progress as one statement per batch),
// claims with FOR UPDATE SKIP LOCKED on a small pool of connections (so dispatchers of many
// processes claim at once without waiting on each other), and one listener connection that turns
// NOTIFYs into wake-ups. Claims are always durable: a job is 'running' under a lease before it
// runs. A lost connection is re-opened with backoff; queued writes are kept and retried.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "jobforge/errors.hpp"
#include "jobforge/store.hpp"
#include "store/pg_conn.hpp"
#include "store/pg_sql.hpp"
#include "store/window_stats.hpp"

namespace jobforge {
namespace {

using pg::Connection;
using pg::Params;

std::string utc_text(int64_t ms) {
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
}
using pg::PgError;
using pg::Result;
namespace sql = pg::sql;
using SteadyClock = std::chrono::steady_clock;

Job read_job(const Result& r, int i) {
  Job j;
  j.rowid = r.integer(i, 0);
  j.id = r.text(i, 1);
  j.type = r.text(i, 2);
  j.status = parse_status(r.text(i, 3)).value_or(Status::created);
  j.priority = static_cast<int>(r.integer(i, 4));
  j.payload_json = r.text(i, 5);
  j.progress = static_cast<int>(r.integer(i, 6));
  j.progress_current = r.real(i, 7);
  j.progress_total = r.real(i, 8);
  j.message = r.text(i, 9);
  j.result_json = r.optional_text(i, 10);
  j.error = r.optional_text(i, 11);
  j.error_detail = r.optional_text(i, 12);
  j.attempts = static_cast<int>(r.integer(i, 13));
  j.max_attempts = static_cast<int>(r.integer(i, 14));
  j.timeout_ms = r.is_null(i, 15) ? r.integer(i, 16) * 1000 : r.integer(i, 15);
  j.retry_delay_ms = r.is_null(i, 17) ? 1000 : r.integer(i, 17);
  j.parent_id = r.optional_text(i, 18);
  j.user_initiated = r.boolean(i, 19);
  j.cancel_requested = r.boolean(i, 20);
  j.created_at = r.integer(i, 21);
  j.queued_at = r.integer(i, 22);
  j.started_at = r.integer(i, 23);
  j.completed_at = r.integer(i, 24);
  j.run_at = r.integer(i, 25);
  j.timeout_at = r.integer(i, 26);
  j.lease_owner = r.text(i, 27);
  j.lease_expires_at = r.integer(i, 28);
  j.backoff = r.is_null(i, 29) ? "fixed" : r.text(i, 29);
  j.stage = r.text(i, 30);
  j.outcome_json = r.optional_text(i, 31);
  j.queue = r.text(i, 32);
  j.unique_key = r.optional_text(i, 33);
  return j;
}

WorkerInfo read_worker(const Result& r, int i) {
  WorkerInfo w;
  w.id = r.text(i, 0);
  w.hostname = r.text(i, 1);
  w.pid = r.integer(i, 2);
  w.version = r.text(i, 3);
  w.started_at = r.integer(i, 4);
  w.heartbeat_at = r.integer(i, 5);
  w.state = r.text(i, 6);
  w.claim_mode = r.text(i, 7);
  w.singleton_role = r.text(i, 8);
  return w;
}

// JSON object builder for jsonb_to_recordset batches (field order does not matter).
class JsonRow {
 public:
  explicit JsonRow(std::string& out) : out_(out) { out_ += '{'; }
  ~JsonRow() { out_ += '}'; }
  JsonRow& field(const char* name, std::string_view v) {
    key(name);
    pg::append_json_string(out_, v);
    return *this;
  }
  JsonRow& field(const char* name, const std::string& v) {
    return field(name, std::string_view(v));
  }
  JsonRow& field(const char* name, const char* v) { return field(name, std::string_view(v)); }
  JsonRow& field(const char* name, const std::optional<std::string>& v) {
    if (!v) return null(name);
    return field(name, std::string_view(*v));
  }
  JsonRow& field(const char* name, int64_t v) {
    key(name);
    out_ += std::to_string(v);
    return *this;
  }
  JsonRow& field(const char* name, int v) { return field(name, static_cast<int64_t>(v)); }
  JsonRow& field(const char* name, bool v) {
    key(name);
    out_ += v ? "true" : "false";
    return *this;
  }
  JsonRow& field(const char* name, double v) {
    key(name);
    if (!std::isfinite(v)) v = 0;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    out_ += buf;
    return *this;
  }
  JsonRow& null(const char* name) {
    key(name);
    out_ += "null";
    return *this;
  }

 private:
  void key(const char* name) {
    if (!first_) out_ += ',';
    first_ = false;
    out_ += '"';
    out_ += name;
    out_ += "\":";
  }
  std::string& out_;
  bool first_ = true;
};

std::optional<std::string> non_empty(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

// What an operation sees inside the writer's transaction.
struct WriteContext {
  Connection& conn;
  std::vector<Transition> transitions;
  bool replay_after_loss = false;       // an earlier try of this batch may have committed
  bool jobs_due = false;                // NOTIFY idle dispatchers at commit
  std::set<std::string> cancel_owners;  // NOTIFY these workers of cancel requests at commit
};

// One unit of work for the writer. apply() may run more than once (after a lost connection, or
// when a batch fails and its operations are replayed one by one), so it keeps its results in its
// own state and writes idempotently.
struct WriteOp {
  std::function<void(WriteContext&)> apply;
  std::function<void()> committed;                 // optional
  std::function<void(std::exception_ptr)> failed;  // optional
  bool caller_waits = false;
  SteadyClock::time_point submitted = SteadyClock::now();
  std::optional<Outcome> outcome;  // the end of an attempt: merged with its neighbours' ends
};

std::string channel_name(const std::string& prefix, const std::string& schema) {
  std::string name = prefix + schema;
  if (name.size() > 63) name.resize(63);  // NAMEDATALEN - 1: PostgreSQL's limit for a channel
  return name;
}

class PgStore final : public Store {
 public:
  PgStore(const std::string& url, const PostgresOptions& options)
      : url_(url), options_(options), display_(redact_url(url)) {
    if (options_.pool_size < 1)
      throw ValidationError(
          "pool_size", "pool_size must be at least 1, got " + std::to_string(options_.pool_size));
    writer_conn_ = connect();
    migrate(*writer_conn_);
    const std::string schema = writer_conn_->exec("SELECT current_schema()").text(0, 0);
    jobs_channel_ = channel_name("jobforge_jobs.", schema);
    cancel_channel_ = channel_name("jobforge_cancel.", schema);
    if (pipe(wake_pipe_) != 0) throw StoreError(pg::kPgErrorCode, "cannot create a pipe");
    writer_ = std::thread([this] { writer_loop(); });
    listener_ = std::thread([this] { listener_loop(); });
  }

  ~PgStore() override {
    close();
    ::close(wake_pipe_[0]);
    ::close(wake_pipe_[1]);
  }

  void set_commit_listener(CommitListener listener) override {
    std::lock_guard lock(mutex_);
    listener_cb_ = std::move(listener);
  }
  void set_start_rejected_listener(std::function<void(const std::vector<int64_t>&)>) override {
    // Claims are durable here: a start is never written later, so it is never rejected.
  }
  void set_wakeup_listener(std::function<void(const StoreWakeup&)> listener) override {
    std::lock_guard lock(mutex_);
    wakeup_cb_ = std::move(listener);
  }

  std::string health() override {
    std::lock_guard lock(health_mutex_);
    if (!writes_failing_.empty()) {
      const int64_t for_s = std::max<int64_t>(0, now_ms() - writes_failing_since_ms_) / 1000;
      return "degraded: writes failing since " + utc_text(writes_failing_since_ms_) + " (" +
             std::to_string(for_s) + " s): " + writes_failing_ + "; kept and retried";
    }
    if (writer_down_.empty() && listener_down_.empty() && pool_down_.empty()) return "ok";
    const std::string& why = !writer_down_.empty() ? writer_down_
                             : !pool_down_.empty() ? pool_down_
                                                   : listener_down_;
    return "degraded: PostgreSQL at " + display_ + " unreachable (" + why + "); reconnecting";
  }

  // ---- writes ------------------------------------------------------------------------------

  void insert(const std::vector<NewJob>& jobs) override {
    if (jobs.empty()) return;
    std::string batch = "[";
    std::vector<std::string> outside_parents;
    {
      std::set<std::string> ids;
      for (const NewJob& j : jobs) {
        if (j.parent_id && !ids.count(*j.parent_id)) outside_parents.push_back(*j.parent_id);
        ids.insert(j.id);
        if (batch.size() > 1) batch += ',';
        JsonRow row(batch);
        row.field("id", j.id).field("type", j.type).field("priority", j.priority);
        row.field("payload", j.payload_json).field("max_attempts", j.max_attempts);
        row.field("parent", j.parent_id).field("user_initiated", j.user_initiated);
        row.field("timeout_ms", j.timeout_ms).field("retry_delay_ms", j.retry_delay_ms);
        row.field("created_at", j.created_at).field("run_at", j.run_at);
        row.field("backoff", j.backoff.empty() ? std::string("fixed") : j.backoff);
      }
    }
    batch += ']';
    submit_and_wait([&jobs, batch = std::move(batch),
                     parents = std::move(outside_parents)](WriteContext& w) {
      if (!parents.empty()) {
        Result missing = w.conn.exec(sql::kMissingParents, Params().add(pg::text_array(parents)));
        if (missing.rows())
          throw ValidationError("parent", "parent job '" + missing.text(0, 0) + "' does not exist");
      }
      try {
        if (w.replay_after_loss)
          w.conn.exec(std::string(sql::kInsertJobs) + sql::kReplaySuffix, Params().add(batch));
        else
          w.conn.exec(sql::kInsertJobs, Params().add(batch));
      } catch (const PgError& e) {
        // Class 22 (data exception): JSON that JSONB cannot hold, e.g. a \u0000 in a string.
        if (e.sqlstate().rfind("22", 0) == 0)
          throw ValidationError("payload",
                                std::string("payload cannot be stored as JSONB: ") + e.what());
        throw;
      }
      for (const NewJob& j : jobs)
        w.transitions.push_back(
            Transition{j.id, j.type, Status::created, Status::queued, 0, 0, {}, {}, j.created_at});
      w.jobs_due = true;
    });
  }

  std::vector<Job> claim(const ClaimRequest& req) override {
    std::vector<Job> claimed;
    if (req.limit <= 0 || req.types.empty()) return claimed;
    if (!req.durable)
      throw StoreError(pg::kPgErrorCode,
                       "the PostgreSQL store claims durably only (register_worker answers "
                       "\"durable\")");
    const std::string token = new_job_id();
    const bool limited =
        req.max_running_type > 0 || req.max_running_queue > 0 || req.rate_per_ms > 0;
    with_connection([&](Connection& c) {
      claimed.clear();
      release_doubtful_claims(c);
      Result r;
      try {
        std::optional<pg::Transaction> txn;
        int limit = req.limit;
        if (limited) {  // limits are counted in the claim's own transaction
          txn.emplace(c);
          limit = allowed_by_limits(c, req);
        }
        if (limit > 0) {
          r = c.exec(sql::kClaim, Params()
                                      .add(req.now)
                                      .add(req.owner)
                                      .add(req.now + req.lease_ms)
                                      .add(limit)
                                      .add(pg::text_array(req.types))
                                      .add(token)
                                      .add(pg::text_array(req.queues))
                                      .add(pg::text_array(req.exclude_queues)));
          if (req.rate_per_ms > 0) spend_tokens(c, req, r.rows());
        }
        if (txn) txn->commit();
      } catch (const PgError& e) {
        // The COMMIT may have landed before the connection went: such jobs would be 'running'
        // under our lease with nobody running them. Put them back once the server answers.
        if (e.connection_lost()) {
          std::lock_guard lock(mutex_);
          doubtful_claims_.push_back(token);
        }
        throw;
      }
      for (int i = 0; i < r.rows(); ++i) claimed.push_back(read_job(r, i));
    });
    std::sort(claimed.begin(), claimed.end(), [](const Job& a, const Job& b) {
      if (a.priority != b.priority) return a.priority < b.priority;
      if (a.run_at != b.run_at) return a.run_at < b.run_at;
      return a.rowid < b.rowid;
    });
    if (!claimed.empty()) {
      std::vector<Transition> transitions;
      for (const Job& j : claimed)
        transitions.push_back(Transition{j.id,
                                         j.type,
                                         Status::queued,
                                         Status::running,
                                         j.attempts,
                                         j.progress,
                                         {},
                                         {},
                                         req.now});
      CommitListener listener;
      {
        std::lock_guard lock(mutex_);
        listener = listener_cb_;
      }
      if (listener) listener(transitions);
    }
    return claimed;
  }

  void mark_started(StartInfo) override {
    // Claims are durable: the claim itself wrote the running state.
  }
  void release(std::vector<int64_t>) override {
    // Nothing is ever held in memory here.
  }

  // Queued in order with the other writes (a job's last log lines precede its end); the writer
  // turns each run of consecutive ends into one statement.
  void finish(Outcome o) override {
    WriteOp op;
    op.outcome = std::move(o);
    submit(std::move(op));
  }

  void save_progress(std::vector<ProgressUpdate> updates) override {
    if (updates.empty()) return;
    std::lock_guard lock(mutex_);
    if (closed_) throw StoreError(pg::kPgErrorCode, "store '" + display_ + "' is closed");
    for (auto& u : updates) pending_progress_[u.rowid] = std::move(u);
    work_cv_.notify_one();
  }

  CancelResult cancel(const std::string& job_id, int64_t now) override {
    CancelResult result = CancelResult::not_found;
    submit_and_wait([&](WriteContext& w) {
      result = CancelResult::not_found;
      Result q = w.conn.exec(sql::kStatusByIdForUpdate, Params().add(job_id));
      if (!q.rows()) return;
      const int64_t seq = q.integer(0, 0);
      const std::string type = q.text(0, 1);
      const Status status = parse_status(q.text(0, 2)).value_or(Status::created);
      const int attempts = static_cast<int>(q.integer(0, 3));
      const bool batch_parent = q.boolean(0, 5);  // no worker runs it: it ends here
      if (status == Status::running && !batch_parent) {
        w.conn.exec(sql::kRequestCancel, Params().add(now).add(seq));
        if (!q.is_null(0, 4)) w.cancel_owners.insert(q.text(0, 4));
        result = CancelResult::requested;
        return;
      }
      if (!can_transition(status, Status::cancelled)) {
        result = CancelResult::not_cancellable;
        return;
      }
      w.conn.exec(sql::kCancelQueued, Params().add(now).add(seq).add(to_string(status)));
      result = CancelResult::cancelled;
      w.transitions.push_back(Transition{
          job_id, type, status, Status::cancelled, attempts, 0, {}, std::string("cancelled"), now});
    });
    return result;
  }

  int64_t cancel_all(int64_t now, std::vector<std::string>* running_ids) override {
    int64_t count = 0;
    std::vector<std::string> running;
    submit_and_wait([&](WriteContext& w) {
      count = 0;
      running.clear();
      for (Status from : statuses_leading_to(Status::cancelled)) {
        if (from == Status::running) continue;  // running jobs are asked, below
        Result r = w.conn.exec(sql::kCancelAllWithStatus, Params().add(now).add(to_string(from)));
        for (int i = 0; i < r.rows(); ++i) {
          ++count;
          w.transitions.push_back(Transition{r.text(i, 0),
                                             r.text(i, 1),
                                             from,
                                             Status::cancelled,
                                             static_cast<int>(r.integer(i, 2)),
                                             0,
                                             {},
                                             std::string("cancelled"),
                                             now});
        }
      }
      Result r = w.conn.exec(sql::kRequestCancelAllRunning, Params().add(now));
      for (int i = 0; i < r.rows(); ++i) {
        running.push_back(r.text(i, 0));
        if (!r.is_null(i, 1)) w.cancel_owners.insert(r.text(i, 1));
      }
      count += static_cast<int64_t>(running.size());
    });
    if (running_ids) *running_ids = std::move(running);
    return count;
  }

  bool retry(const std::string& job_id, int64_t now) override {
    bool ok = false;
    submit_and_wait([&](WriteContext& w) {
      ok = false;
      Result q = w.conn.exec(sql::kStatusByIdForUpdate, Params().add(job_id));
      if (!q.rows()) return;
      const int64_t seq = q.integer(0, 0);
      const std::string type = q.text(0, 1);
      auto status = parse_status(q.text(0, 2));
      if (!status) return;
      // A manual retry takes a finished, unsuccessful job back; running → queued is the engine's.
      if (!is_final(*status) || !can_transition(*status, Status::queued)) return;
      Result r = w.conn.exec(sql::kRetry, Params().add(now).add(seq).add(to_string(*status)));
      ok = r.affected() == 1;
      if (ok) {
        w.transitions.push_back(
            Transition{job_id, type, *status, Status::queued, 0, 0, {}, {}, now});
        w.jobs_due = true;
      }
    });
    return ok;
  }

  std::vector<std::string> cancel_requests(const std::string& owner) override {
    std::vector<std::string> ids;
    with_connection([&](Connection& c) {
      ids.clear();
      Result r = c.exec(sql::kCancelRequests, Params().add(owner));
      for (int i = 0; i < r.rows(); ++i) ids.push_back(r.text(i, 0));
    });
    return ids;
  }

  // ---- workers -----------------------------------------------------------------------------

  std::string register_worker(const WorkerInfo& wi,
                              const std::function<bool(const WorkerInfo&)>& is_dead,
                              bool /*allow_memory*/) override {
    submit_and_wait([&](WriteContext& w) {
      if (!wi.singleton_role.empty()) {
        // One registration at a time decides a role; a dead holder must not keep it.
        w.conn.exec(sql::kLockWorkers);
        Result list = w.conn.exec(sql::kListWorkers);
        for (int i = 0; i < list.rows(); ++i) {
          WorkerInfo other = read_worker(list, i);
          if (other.id == wi.id || other.state != "running" ||
              other.singleton_role != wi.singleton_role)
            continue;
          if (is_dead(other)) {
            w.conn.exec(sql::kSetWorkerState, Params().add("dead").add(other.id));
            continue;
          }
          throw SingletonTaken("singleton role '" + wi.singleton_role +
                               "' is already held by worker " + other.id + " (host " +
                               other.hostname + ", pid " + std::to_string(other.pid) +
                               "); stop it first or use another role");
        }
      }
      w.conn.exec(sql::kUpsertWorker, Params()
                                          .add(wi.id)
                                          .add(wi.hostname)
                                          .add(wi.pid)
                                          .add(wi.version)
                                          .add(wi.started_at)
                                          .add(wi.heartbeat_at)
                                          .add(wi.singleton_role));
    });
    // Always durable: PostgreSQL is meant for many hosts, and a claim held in memory would be
    // invisible to them.
    return "durable";
  }

  bool set_claim_mode(const std::string& worker_id, const std::string& mode,
                      const std::function<bool(const WorkerInfo&)>&) override {
    if (mode == "memory") return false;
    submit_and_wait([&](WriteContext& w) {
      w.conn.exec(sql::kSetClaimMode, Params().add(mode).add(worker_id));
    });
    return true;
  }

  void heartbeat(const std::string& worker_id, int64_t now, int64_t lease_ms) override {
    WriteOp op;
    op.apply = [=](WriteContext& w) {
      w.conn.exec(sql::kHeartbeatWorker, Params().add(now).add(worker_id));
      w.conn.exec(sql::kExtendLeases, Params().add(now + lease_ms).add(worker_id));
    };
    submit(std::move(op));
  }

  void deregister_worker(const std::string& worker_id) override {
    submit_and_wait([&](WriteContext& w) {
      w.conn.exec(sql::kSetWorkerState, Params().add("stopped").add(worker_id));
    });
  }

  std::vector<WorkerInfo> workers() override {
    std::vector<WorkerInfo> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(sql::kListWorkers);
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_worker(r, i));
    });
    return out;
  }

  void publish_types(const std::string& worker_id, const std::vector<PublishedType>& types,
                     int64_t now) override {
    submit_and_wait([&](WriteContext& w) {
      for (const auto& t : types)
        w.conn.exec(sql::kPublishType,
                    Params().add(worker_id).add(t.type).add(t.options_json).add(now));
      w.conn.exec(sql::kUnpublishTypes, Params().add(worker_id).add(now));
      w.conn.exec(sql::kDeleteSupersededTypes, Params().add(worker_id));
    });
  }

  std::vector<PublishedType> published_types() override {
    std::vector<PublishedType> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(sql::kListPublishedTypes);
      for (int i = 0; i < r.rows(); ++i)
        out.push_back(PublishedType{r.text(i, 0), r.text(i, 1), r.text(i, 2), r.integer(i, 3),
                                    r.integer(i, 4)});
    });
    return out;
  }

  int64_t recover_orphans(int64_t now, const std::string& self_id,
                          const std::function<bool(const WorkerInfo&)>& is_dead) override {
    int64_t recovered = 0;
    submit_and_wait([&](WriteContext& w) {
      recovered = 0;
      Result list = w.conn.exec(sql::kListWorkers);
      for (int i = 0; i < list.rows(); ++i) {
        WorkerInfo wi = read_worker(list, i);
        if (wi.state == "running" && wi.id != self_id && is_dead(wi))
          w.conn.exec(sql::kSetWorkerState, Params().add("dead").add(wi.id));
      }
      w.conn.exec(sql::kDeleteOldWorkers, Params().add(now - int64_t{24} * 3600 * 1000));
      Result r = w.conn.exec(sql::kRecoverOrphans, Params().add(now).add(self_id));
      for (int i = 0; i < r.rows(); ++i) {
        ++recovered;
        const Status to = parse_status(r.text(i, 2)).value_or(Status::queued);
        std::optional<std::string> error;
        if (to == Status::failed) error = "worker was lost while running the job";
        if (to == Status::queued) w.jobs_due = true;
        w.transitions.push_back(Transition{r.text(i, 0),
                                           r.text(i, 1),
                                           Status::running,
                                           to,
                                           static_cast<int>(r.integer(i, 3)),
                                           0,
                                           {},
                                           error,
                                           now});
      }
    });
    return recovered;
  }

  // ---- logs and statistics -----------------------------------------------------------------

  void append_logs(std::function<std::vector<LogRecord>()> drain) override {
    // The op keeps the drained lines: a batch replayed after a failure writes them again.
    struct State {
      bool drained = false;
      std::vector<LogRecord> lines;
      std::string batch;
    };
    auto state = std::make_shared<State>();
    WriteOp op;
    op.apply = [state, drain = std::move(drain)](WriteContext& w) {
      if (!state->drained) {
        state->lines = drain();
        state->drained = true;
        state->batch = "[";
        for (const LogRecord& l : state->lines) {
          if (state->batch.size() > 1) state->batch += ',';
          JsonRow row(state->batch);
          row.field("job_id", l.job_id).field("attempt", l.attempt).field("at", l.at);
          row.field("level", static_cast<int>(l.level)).field("stage", l.stage);
          row.field("message", l.message).field("fields", l.fields_json);
        }
        state->batch += ']';
      }
      if (state->lines.empty()) return;
      Result r = w.conn.exec(sql::kInsertLogs, Params().add(state->batch));
      std::vector<int64_t> ids;
      for (int i = 0; i < r.rows(); ++i) ids.push_back(r.integer(i, 0));
      std::sort(ids.begin(), ids.end());  // identities are drawn in insertion order
      for (size_t i = 0; i < ids.size() && i < state->lines.size(); ++i)
        state->lines[i].id = ids[i];
      Transition t;
      t.from = t.to = Status::running;
      t.at = state->lines.back().at;
      t.log_lines = std::make_shared<const std::vector<LogRecord>>(state->lines);
      w.transitions.push_back(std::move(t));
    };
    submit(std::move(op));
  }

  std::vector<LogRecord> logs(const LogQuery& q) override {
    std::string text = sql::kLogsPrefix;
    if (q.since > 0) text += " AND at >= $5";
    text += q.newest ? " ORDER BY id DESC LIMIT $4" : " ORDER BY id LIMIT $4";
    Params p;
    p.add(q.job_id).add(q.after_id).add(static_cast<int>(q.min_level)).add(q.limit);
    if (q.since > 0) p.add(q.since);
    std::vector<LogRecord> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(text, p);
      for (int i = 0; i < r.rows(); ++i) {
        LogRecord l;
        l.id = r.integer(i, 0);
        l.job_id = r.text(i, 1);
        l.attempt = static_cast<int>(r.integer(i, 2));
        l.at = r.integer(i, 3);
        l.level = static_cast<LogLevel>(r.integer(i, 4));
        l.stage = r.text(i, 5);
        l.message = r.text(i, 6);
        l.fields_json = r.text(i, 7);
        out.push_back(std::move(l));
      }
    });
    if (q.newest) std::reverse(out.begin(), out.end());
    return out;
  }

  StatsDetail stats_detail(int64_t now, int64_t window_ms, int64_t rate_window_ms) override {
    StatsDetail d;
    with_connection([&](Connection& c) { d = stats_detail_on(c, now, window_ms, rate_window_ms); });
    return d;
  }

  std::string integrity_check() override {
    std::string out = "ok";
    with_connection([&](Connection& c) {
      // PostgreSQL checks its own pages; what can go wrong here is a schema we do not know.
      const int64_t version = c.exec(sql::kSchemaVersion).integer(0, 0);
      out = version == sql::kLatestVersion
                ? "ok"
                : "schema version " + std::to_string(version) + ", expected " +
                      std::to_string(sql::kLatestVersion);
    });
    return out;
  }

  // ---- reads -------------------------------------------------------------------------------

  std::optional<Job> get(const std::string& job_id) override {
    std::optional<Job> out;
    with_connection([&](Connection& c) {
      Result r = c.exec(sql::kGetJob, Params().add(job_id));
      out = r.rows() ? std::optional<Job>(read_job(r, 0)) : std::nullopt;
    });
    return out;
  }

  std::vector<Job> list(const JobQuery& q) override {
    std::string text = sql::kListPrefix;
    Params p;
    std::vector<std::string> where;
    std::vector<std::string> statuses;
    for (Status s : q.statuses) statuses.emplace_back(to_string(s));
    if (q.status) statuses.emplace_back(to_string(*q.status));
    if (!statuses.empty()) {
      p.add(pg::text_array(statuses));
      where.push_back("status = ANY($" + std::to_string(p.size()) + "::text[])");
    }
    if (q.type) {
      p.add(*q.type);
      where.push_back("type = $" + std::to_string(p.size()));
    }
    if (q.parent_id) {
      p.add(*q.parent_id);
      where.push_back("parent_job_id = $" + std::to_string(p.size()));
    }
    for (size_t i = 0; i < where.size(); ++i) text += (i ? " AND " : " WHERE ") + where[i];
    p.add(q.limit).add(q.offset);
    text += " ORDER BY created_at DESC, seq DESC LIMIT $" + std::to_string(p.size() - 1) +
            " OFFSET $" + std::to_string(p.size());
    std::vector<Job> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(text, p);
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_job(r, i));
    });
    return out;
  }

  Stats stats() override {
    Stats st;
    with_connection([&](Connection& c) {
      st = Stats{};
      Result r = c.exec(sql::kStats);
      for (int i = 0; i < r.rows(); ++i) {
        const int64_t n = r.integer(i, 1);
        st.total += n;
        if (auto status = parse_status(r.text(i, 0))) st.by_status[static_cast<int>(*status)] = n;
      }
    });
    return st;
  }

  std::optional<int64_t> next_run_at(const std::vector<std::string>& types) override {
    if (types.empty()) return std::nullopt;
    std::optional<int64_t> out;
    with_connection([&](Connection& c) {
      Result r = c.exec(sql::kNextRunAt, Params().add(pg::text_array(types)));
      out = r.rows() && !r.is_null(0, 0) ? std::optional<int64_t>(r.integer(0, 0)) : std::nullopt;
    });
    return out;
  }

  std::optional<int64_t> next_run_at_filtered(const ClaimRequest& filter) override {
    if (filter.types.empty()) return std::nullopt;
    if (filter.queues.empty() && filter.exclude_queues.empty()) return next_run_at(filter.types);
    std::optional<int64_t> out;
    with_connection([&](Connection& c) {
      Result r = c.exec(sql::kNextRunAtFiltered, Params()
                                                     .add(pg::text_array(filter.types))
                                                     .add(pg::text_array(filter.queues))
                                                     .add(pg::text_array(filter.exclude_queues)));
      out = r.rows() && !r.is_null(0, 0) ? std::optional<int64_t>(r.integer(0, 0)) : std::nullopt;
    });
    return out;
  }

  // ---- workflows ---------------------------------------------------------------------------

  std::vector<std::string> insert_jobs(const std::vector<NewJob>& jobs,
                                       const InsertLimits& limits) override {
    std::vector<std::string> ids;
    if (jobs.empty()) return ids;
    bool plain = limits.max_queue_size == 0 && limits.max_queue_sizes.empty();
    for (const auto& j : jobs) plain = plain && j.plain();
    if (plain) {  // the hot path: no workflow option at all
      insert(jobs);
      for (const auto& j : jobs) ids.push_back(j.id);
      return ids;
    }
    submit_and_wait([&](WriteContext& w) {
      ids.clear();
      std::vector<std::pair<std::string, int64_t>> queued_in;
      for (const NewJob& j : jobs) ids.push_back(insert_workflow_job(w, j, limits, queued_in));
    });
    return ids;
  }

  std::vector<Job> dependencies(const std::string& job_id) override {
    std::vector<Job> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(sql::kDependencies, Params().add(job_id));
      for (int i = 0; i < r.rows(); ++i) out.push_back(read_job(r, i));
    });
    return out;
  }

  void upsert_schedule(const Schedule& sc) override {
    submit_and_wait([&](WriteContext& w) {
      Params p;
      p.add(sc.name).add(sc.cron).add(sc.timezone).add(sc.type).add(sc.payload_json);
      if (sc.priority) p.add(*sc.priority); else p.null();
      p.add(sc.queue).add(sc.misfire).add(sc.next_fire_at).add(now_ms());
      w.conn.exec(sql::kUpsertSchedule, p);
    });
  }

  bool delete_schedule(const std::string& name) override {
    bool deleted = false;
    submit_and_wait([&](WriteContext& w) {
      const bool now_deleted = w.conn.exec(sql::kDeleteSchedule, Params().add(name)).affected() > 0;
      deleted = now_deleted || (w.replay_after_loss && deleted);
    });
    return deleted;
  }

  std::vector<Schedule> schedules() override {
    std::vector<Schedule> out;
    with_connection([&](Connection& c) {
      out.clear();
      Result r = c.exec(sql::kListSchedules);
      for (int i = 0; i < r.rows(); ++i) {
        Schedule sc;
        sc.name = r.text(i, 0);
        sc.cron = r.text(i, 1);
        sc.timezone = r.text(i, 2);
        sc.type = r.text(i, 3);
        sc.payload_json = r.text(i, 4);
        if (!r.is_null(i, 5)) sc.priority = static_cast<int>(r.integer(i, 5));
        sc.queue = r.text(i, 6);
        sc.misfire = r.text(i, 7);
        sc.next_fire_at = r.integer(i, 8);
        sc.last_fire_at = r.integer(i, 9);
        sc.last_job_id = r.text(i, 10);
        sc.created_at = r.integer(i, 11);
        out.push_back(std::move(sc));
      }
    });
    return out;
  }

  bool fire_schedule(const std::string& name, int64_t expected_next, int64_t next,
                     const std::optional<NewJob>& job) override {
    bool fired = false;
    submit_and_wait([&](WriteContext& w) {
      // After a lost connection the first COMMIT may have landed: then the schedule already
      // shows this fire (last_fire_at, last job) and it counts as ours.
      fired = false;
      Params p;
      p.add(next).add(expected_next);
      if (job) p.add(job->id); else p.null();
      p.add(now_ms()).add(name);
      if (w.conn.exec(sql::kAdvanceSchedule, p).affected() == 0) {  // another host fired it
        if (w.replay_after_loss)
          fired = w.conn.exec(sql::kScheduleFired, Params().add(name).add(expected_next).add(next))
                      .rows() > 0;
        return;
      }
      fired = true;
      if (!job) return;
      std::vector<std::pair<std::string, int64_t>> queued_in;
      insert_workflow_job(w, *job, InsertLimits{}, queued_in);
    });
    return fired;
  }

  int64_t delete_finished(int64_t cutoff, int limit) override {
    int64_t deleted = 0;
    submit_and_wait([&](WriteContext& w) {
      std::vector<std::string> ids;
      for (Status st : {Status::completed, Status::failed, Status::cancelled, Status::timeout}) {
        const int64_t left = static_cast<int64_t>(limit) - static_cast<int64_t>(ids.size());
        if (left <= 0) break;
        Result r = w.conn.exec(sql::kDeleteFinished,
                               Params().add(to_string(st)).add(cutoff).add(left));
        for (int i = 0; i < r.rows(); ++i) ids.push_back(r.text(i, 0));
      }
      deleted = static_cast<int64_t>(ids.size());
      if (!ids.empty()) {
        const std::string array = pg::text_array(ids);
        w.conn.exec(sql::kDeleteLogsOf, Params().add(array));
        w.conn.exec(sql::kDeleteDependenciesOf, Params().add(array));
      }
      // Statistics buckets older than the cutoff go too.
      prune_stats(w.conn, cutoff / window_stats::kBucketMs);
    });
    return deleted;
  }

  void flush() override {
    std::unique_lock lock(mutex_);
    const uint64_t target = submitted_;
    done_cv_.wait(lock, [&] {
      return (completed_ >= target && pending_progress_.empty() && !side_in_flight_) ||
             writer_exited_;
    });
  }

  void close() override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      work_cv_.notify_all();
    }
    if (writer_.joinable()) writer_.join();
    const char byte = 1;
    if (write(wake_pipe_[1], &byte, 1) < 0) {
      // The listener also re-checks closed_ at every poll timeout.
    }
    if (listener_.joinable()) listener_.join();
    std::lock_guard lock(pool_mutex_);
    idle_.clear();
  }

 private:
  std::unique_ptr<Connection> connect() {
    return std::make_unique<Connection>(url_, options_.connect_timeout_s);
  }

  void migrate(Connection& c) {
    c.exec(sql::kMigrationsTable);
    pg::Transaction txn(c);
    c.exec(sql::kMigrationLock);
    const int64_t version = c.exec(sql::kSchemaVersion).integer(0, 0);
    if (version < 0)
      throw StoreError(pg::kPgErrorCode, "database '" + display_ + "' has schema version " +
                                             std::to_string(version) + ", which no jobforge wrote");
    if (version > sql::kLatestVersion)
      throw StoreError(pg::kPgErrorCode, "database '" + display_ + "' has schema version " +
                                             std::to_string(version) +
                                             ", newer than this jobforge (" +
                                             std::to_string(sql::kLatestVersion) + ")");
    for (int v = static_cast<int>(version) + 1; v <= sql::kLatestVersion; ++v) {
      c.exec(sql::kMigrations[v - 1]);
      c.exec(sql::kRecordMigration, Params().add(v).add(now_ms()));
    }
    txn.commit();
  }

  // ---- workflows: helpers ------------------------------------------------------------------

  static int64_t count_of(Connection& c, const char* query, const std::string& key) {
    Result r = c.exec(query, Params().add(key));
    return r.rows() ? r.integer(0, 0) : 0;
  }

  // How many jobs this claim may take under its concurrency and rate limits, counted inside the
  // claim's transaction. Advisory locks (held to its commit) serialize the claims of one type,
  // one queue, one bucket across every host, so two hosts never both see the same room.
  static int allowed_by_limits(Connection& c, const ClaimRequest& req) {
    int64_t limit = req.limit;
    if (req.max_running_type > 0) {
      c.exec(sql::kLockLimit, Params().add("type:" + req.types.front()));
      const int64_t running = count_of(c, sql::kRunningOfType, req.types.front());
      limit = std::min<int64_t>(limit, req.max_running_type - running);
    }
    if (req.max_running_queue > 0 && !req.queues.empty()) {
      c.exec(sql::kLockLimit, Params().add("queue:" + req.queues.front()));
      const int64_t running = count_of(c, sql::kRunningInQueue, req.queues.front());
      limit = std::min<int64_t>(limit, req.max_running_queue - running);
    }
    if (req.rate_per_ms > 0) limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens(c, req)));
    return static_cast<int>(std::max<int64_t>(0, limit));
  }

  // The bucket's tokens now; its row stays locked (FOR UPDATE) until the claim commits.
  static double tokens(Connection& c, const ClaimRequest& req) {
    c.exec(sql::kLockBucket, Params().add(req.rate_key).add(req.rate_burst).add(req.now));
    Result r = c.exec(sql::kReadBucket, Params().add(req.rate_key));
    if (!r.rows()) return req.rate_burst;
    const double elapsed = static_cast<double>(std::max<int64_t>(0, req.now - r.integer(0, 1)));
    return std::min(req.rate_burst, r.real(0, 0) + elapsed * req.rate_per_ms);
  }

  static void spend_tokens(Connection& c, const ClaimRequest& req, int taken) {
    const double left = tokens(c, req) - taken;
    c.exec(sql::kWriteBucket, Params().add(req.rate_key).add(left).add(req.now));
  }

  // Inserts one job with workflow options; returns its id, or that of the job holding its key.
  std::string insert_workflow_job(WriteContext& w, const NewJob& j, const InsertLimits& limits,
                                  std::vector<std::pair<std::string, int64_t>>& queued_in) {
    if (w.replay_after_loss && w.conn.exec(sql::kJobIdExists, Params().add(j.id)).rows())
      return j.id;  // the first COMMIT landed
    if (j.unique_key) {
      if (auto holder = unique_holder(w, j)) return *holder;
    }
    if (j.parent_id && !w.conn.exec(sql::kJobIdExists, Params().add(*j.parent_id)).rows())
      throw ValidationError("parent", "parent job '" + *j.parent_id + "' does not exist");
    Status status = j.batch_policy ? (j.batch_children ? Status::running : Status::completed)
                                   : Status::queued;
    std::optional<std::string> error;
    int64_t pending = 0;
    for (const auto& dep : j.depends_on) {
      Result d = w.conn.exec(sql::kDependencyState, Params().add(dep));
      if (!d.rows()) throw ValidationError("depends_on", "dependency '" + dep + "' does not exist");
      const auto dep_status = parse_status(d.text(0, 0)).value_or(Status::queued);
      if (!is_final(dep_status)) {
        ++pending;
      } else if (dep_status != Status::completed && !j.run_if_dependency_fails && !error) {
        error = "dependency " + dep + " ended " + std::string(to_string(dep_status));
      }
    }
    if (error) status = Status::cancelled;
    else if (pending > 0) status = Status::created;
    if (status == Status::queued) {
      const int64_t max = limits.limit_for(j.queue);
      if (max > 0) {
        auto it = std::find_if(queued_in.begin(), queued_in.end(),
                               [&](const auto& p) { return p.first == j.queue; });
        if (it == queued_in.end()) {
          w.conn.exec(sql::kLockQueue, Params().add(j.queue));
          Result c = w.conn.exec(sql::kCountQueuedInQueue, Params().add(j.queue).add(max));
          queued_in.emplace_back(j.queue, c.rows() ? c.integer(0, 0) : 0);
          it = std::prev(queued_in.end());
        }
        if (it->second >= max) throw QueueFull(j.queue, max);
        ++it->second;
      }
    }
    const bool final_now = is_final(status);
    std::optional<std::string> result;
    if (status == Status::completed) result = R"({"total": 0})";
    Params p;
    p.add(j.id).add(j.type).add(j.priority).add(j.payload_json).add(j.max_attempts);
    p.add(j.parent_id).add(j.user_initiated).add(j.timeout_ms).add(j.retry_delay_ms);
    p.add(j.created_at).add(j.run_at).add(j.backoff.empty() ? std::string("fixed") : j.backoff);
    p.add(std::string(to_string(status))).add(j.queue).add(j.unique_key).add(j.unique_for_ms);
    p.add(pending);
    if (j.run_if_dependency_fails) p.add("run"); else p.null();
    p.add(j.batch_policy).add(static_cast<double>(j.batch_children)).add(error);
    if (final_now) p.add(j.created_at); else p.null();
    if (status == Status::running) p.add(j.created_at); else p.null();
    p.add(result).add(status == Status::completed ? 100 : 0);
    w.conn.exec("SAVEPOINT insert_job");
    try {
      w.conn.exec(sql::kInsertWorkflowJob, p);
      w.conn.exec("RELEASE SAVEPOINT insert_job");
    } catch (const PgError& e) {
      if (e.transient()) throw;
      w.conn.exec("ROLLBACK TO SAVEPOINT insert_job");
      // Another host inserted the same key since we looked (the unique index waited for its
      // commit): that job is the answer.
      if (e.sqlstate() == "23505" && j.unique_key)
        if (auto holder = unique_holder(w, j)) return *holder;
      if (e.sqlstate().rfind("22", 0) == 0)
        throw ValidationError("payload",
                              std::string("payload cannot be stored as JSONB: ") + e.what());
      throw;
    }
    for (const auto& dep : j.depends_on)
      w.conn.exec(sql::kInsertDependency, Params().add(dep).add(j.id));
    if (status != Status::created)
      w.transitions.push_back(Transition{j.id, j.type, Status::created, status, 0,
                                         status == Status::completed ? 100 : 0, result, error,
                                         j.created_at});
    if (status == Status::queued) w.jobs_due = true;
    return j.id;
  }

  // The id of the job holding j's unique key, if it still holds it; a holder whose hold ended
  // gives the key up (to j).
  std::optional<std::string> unique_holder(WriteContext& w, const NewJob& j) {
    Result q = w.conn.exec(sql::kUniqueHolder, Params().add(*j.unique_key));
    if (!q.rows()) return std::nullopt;
    const auto status = parse_status(q.text(0, 2)).value_or(Status::queued);
    const int64_t ended = q.integer(0, 3), keep_for = q.integer(0, 4);
    if (!is_final(status) || ended + keep_for > j.created_at) return q.text(0, 1);
    w.conn.exec(sql::kReleaseUniqueKey, Params().add(q.integer(0, 0)));
    return std::nullopt;
  }

  // What a status change means for other jobs, in the same transaction as the change: a batch
  // parent counts its final children (and ends with the last); a batch parent that ends early
  // cancels its unfinished children; dependents of a final job are released or cancelled. The
  // changes made here are transitions too, so they cascade. Costs two indexed probes per
  // transaction with final transitions while no batch or dependency exists.
  void apply_workflow_effects(WriteContext& w) {
    std::optional<bool> any_batch, any_dependency;
    const int64_t now = now_ms();
    for (size_t i = 0; i < w.transitions.size(); ++i) {
      const Transition t = w.transitions[i];  // a copy: the vector grows below
      if (t.from == t.to) continue;
      const bool to_final = is_final(t.to);
      const bool reopened = is_final(t.from) && t.to == Status::queued;  // a manual retry
      if (!to_final && !reopened) continue;
      if (!any_batch) any_batch = w.conn.exec(sql::kAnyBatch).boolean(0, 0);
      if (*any_batch) batch_effects(w, t, to_final, now);
      if (!to_final) continue;
      if (!any_dependency) any_dependency = w.conn.exec(sql::kAnyDependency).boolean(0, 0);
      if (*any_dependency) dependency_effects(w, t, now);
    }
  }

  void batch_effects(WriteContext& w, const Transition& t, bool to_final, int64_t now) {
    Result s = w.conn.exec(sql::kParentAndPolicy, Params().add(t.job_id));
    if (!s.rows()) return;
    const std::optional<std::string> parent = s.optional_text(0, 0), policy = s.optional_text(0, 1);
    if (policy && to_final && t.to != Status::completed) {
      // A batch parent ended early (cancelled, failed fast): its unfinished children end too.
      Result c = w.conn.exec(sql::kCancelChildren,
                             Params()
                                 .add("batch " + t.job_id + " ended " + std::string(to_string(t.to)))
                                 .add(now)
                                 .add(t.job_id));
      for (int i = 0; i < c.rows(); ++i)
        w.transitions.push_back(Transition{c.text(i, 0), c.text(i, 1), Status::queued,
                                           Status::cancelled, static_cast<int>(c.integer(i, 2)), 0,
                                           {}, std::string("batch cancelled"), now});
      Result rq = w.conn.exec(sql::kRequestCancelChildren, Params().add(now).add(t.job_id));
      for (int i = 0; i < rq.rows(); ++i)
        if (!rq.is_null(i, 0)) w.cancel_owners.insert(rq.text(i, 0));
    }
    if (!parent) return;
    Result u = w.conn.exec(sql::kBatchChildFinal,
                           Params().add(*parent).add(to_final ? 1 : -1).add(now));
    if (!u.rows()) return;  // not a batch, or it already ended
    const int64_t seq = u.integer(0, 0);
    const std::string type = u.text(0, 1);
    const auto current = static_cast<int64_t>(u.real(0, 2));
    const auto total = static_cast<int64_t>(u.real(0, 3));
    const std::string parent_policy = u.text(0, 4);
    const int64_t attempts = u.integer(0, 5);
    const bool child_failed = t.to == Status::failed || t.to == Status::timeout;
    if (parent_policy == "fail_fast" && child_failed) {
      end_batch(w, *parent, seq, type, attempts, Status::failed, std::nullopt,
                "child " + t.job_id + " " + std::string(to_string(t.to)) +
                    (t.error ? ": " + *t.error : std::string()),
                now);
      return;
    }
    if (!to_final || current < total) return;
    // The last child ended: the summary counts children by final status.
    std::string result = "{\"total\": " + std::to_string(total);
    int64_t failed = 0;
    Result c = w.conn.exec(sql::kBatchChildCounts, Params().add(*parent));
    for (int i = 0; i < c.rows(); ++i) {
      const std::string st = c.text(i, 0);
      const int64_t n = c.integer(i, 1);
      result += ", \"" + st + "\": " + std::to_string(n);
      if (st == "failed" || st == "timeout") failed += n;
    }
    result += "}";
    if (parent_policy == "fail" && failed > 0)
      end_batch(w, *parent, seq, type, attempts, Status::failed, result,
                std::to_string(failed) + " of " + std::to_string(total) + " children failed", now);
    else
      end_batch(w, *parent, seq, type, attempts, Status::completed, result, std::nullopt, now);
  }

  void end_batch(WriteContext& w, const std::string& id, int64_t seq, const std::string& type,
                 int64_t attempts, Status to, const std::optional<std::string>& result,
                 const std::optional<std::string>& error, int64_t now) {
    Result r = w.conn.exec(
        sql::kEndBatch,
        Params().add(std::string(to_string(to))).add(result).add(error).add(now).add(seq));
    if (r.affected() == 0) return;
    w.transitions.push_back(Transition{id, type, Status::running, to, static_cast<int>(attempts),
                                       to == Status::completed ? 100 : 0, result, error, now});
  }

  void dependency_effects(WriteContext& w, const Transition& t, int64_t now) {
    Result deps = w.conn.exec(sql::kDependents, Params().add(t.job_id));
    const bool completed = t.to == Status::completed;
    const std::string why = "dependency " + t.job_id + " ended " + std::string(to_string(t.to));
    for (int i = 0; i < deps.rows(); ++i) {
      const std::string id = deps.text(i, 0);
      // Released (its dependency completed, or it runs regardless) ...
      Result u = w.conn.exec(sql::kDependencyDone, Params().add(now).add(id).add(completed));
      if (u.rows()) {
        if (u.text(0, 1) == "queued") {
          w.transitions.push_back(
              Transition{id, u.text(0, 0), Status::created, Status::queued, 0, 0, {}, {}, now});
          w.jobs_due = true;
        }
        continue;
      }
      if (completed) continue;
      // ... or cancelled.
      Result c = w.conn.exec(sql::kCancelWaiting, Params().add(why).add(now).add(id));
      if (c.rows())
        w.transitions.push_back(
            Transition{id, c.text(0, 0), Status::created, Status::cancelled, 0, 0, {}, why, now});
    }
  }

  // ---- health ------------------------------------------------------------------------------

  void set_down(std::string& slot, const std::string& why) {
    std::lock_guard lock(health_mutex_);
    slot = why.empty() ? "connection lost" : why;
  }
  void set_up(std::string& slot) {
    std::lock_guard lock(health_mutex_);
    slot.clear();
  }
  // While the server refuses writes for want of disk or memory, callers queued behind the batch
  // being retried get the error at once instead of waiting for the space to return.
  void refuse_waiting_callers(std::exception_ptr error) {
    std::vector<WriteOp> refused;
    {
      std::lock_guard lock(mutex_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if (it->caller_waits) {
          refused.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& op : refused) report_failure(op, error);
    std::lock_guard lock(mutex_);
    completed_ += refused.size();
    done_cv_.notify_all();
  }

  // The server refuses writes for want of disk or memory (first line of its message); "" once a
  // write commits again.
  void set_writes_failing(const std::string& why) {
    std::string line = why.substr(0, why.find('\n'));
    if (line.rfind("ERROR:", 0) == 0) line.erase(0, line.find_first_not_of(' ', 6));
    std::lock_guard lock(health_mutex_);
    writes_failing_flag_.store(!line.empty(), std::memory_order_release);
    if (line.empty()) {
      writes_failing_.clear();
      writes_failing_since_ms_ = 0;
      return;
    }
    if (writes_failing_.empty()) {
      writes_failing_since_ms_ = now_ms();
      std::fprintf(stderr,
                   "jobforge: writes to PostgreSQL at %s are failing (%s); kept and retried\n",
                   display_.c_str(), line.c_str());
    }
    writes_failing_ = line;
  }

  // ---- pool --------------------------------------------------------------------------------

  // Runs `fn` on a pooled connection; a lost connection is replaced and `fn` tried again (reads
  // and single-statement claims are safe to repeat), a few times with backoff, then the error
  // goes to the caller.
  void with_connection(const std::function<void(Connection&)>& fn) {
    int64_t delay_ms = 20;
    for (int attempt = 0;; ++attempt) {
      std::unique_ptr<Connection> c;
      try {
        c = acquire();
        fn(*c);
        release_connection(std::move(c));
        set_up(pool_down_);
        return;
      } catch (const PgError& e) {
        if (!e.connection_lost()) {
          if (c) release_connection(std::move(c));
          throw;
        }
        set_down(pool_down_, e.what());
        drop_connection();
        if (attempt >= 3) throw;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      delay_ms = std::min<int64_t>(delay_ms * 4, options_.reconnect_max_delay_ms);
    }
  }

  std::unique_ptr<Connection> acquire() {
    {
      std::unique_lock lock(pool_mutex_);
      pool_cv_.wait(lock, [&] { return !idle_.empty() || open_ < options_.pool_size; });
      while (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        if (c->ok()) return c;
        --open_;  // gone while idle (server restart): replaced below
      }
      ++open_;
    }
    try {
      return connect();
    } catch (...) {
      drop_connection();
      throw;
    }
  }
  void release_connection(std::unique_ptr<Connection> c) {
    std::lock_guard lock(pool_mutex_);
    if (c->ok() && PQtransactionStatus(c->handle()) == PQTRANS_IDLE) {
      idle_.push_back(std::move(c));
    } else {
      --open_;
    }
    pool_cv_.notify_one();
  }
  void drop_connection() {
    std::lock_guard lock(pool_mutex_);
    --open_;
    pool_cv_.notify_one();
  }

  void release_doubtful_claims(Connection& c) {
    std::vector<std::string> tokens;
    {
      std::lock_guard lock(mutex_);
      if (doubtful_claims_.empty()) return;
      tokens.swap(doubtful_claims_);
    }
    try {
      Result r =
          c.exec(sql::kReleaseDoubtfulClaims, Params().add(pg::text_array(tokens)).add(now_ms()));
      if (r.affected() > 0) notify_jobs_due(c);
    } catch (...) {
      std::lock_guard lock(mutex_);
      doubtful_claims_.insert(doubtful_claims_.end(), tokens.begin(), tokens.end());
      throw;
    }
  }

  void notify_jobs_due(Connection& c) {
    c.exec("SELECT pg_notify($1, '')", Params().add(jobs_channel_));
  }

  // ---- listener ----------------------------------------------------------------------------

  bool is_closed() {
    std::lock_guard lock(mutex_);
    return closed_;
  }

  void deliver(const StoreWakeup& w) {
    std::function<void(const StoreWakeup&)> cb;
    {
      std::lock_guard lock(mutex_);
      cb = wakeup_cb_;
    }
    if (cb) cb(w);
  }

  void listener_loop() {
    std::unique_ptr<Connection> conn;
    int64_t delay_ms = 50;
    bool was_down = false;
    while (!is_closed()) {
      if (!conn) {
        try {
          conn = connect();
          for (const auto& ch : {jobs_channel_, cancel_channel_}) {
            char* quoted = PQescapeIdentifier(conn->handle(), ch.c_str(), ch.size());
            std::string listen = std::string("LISTEN ") + (quoted ? quoted : "\"\"");
            if (quoted) PQfreemem(quoted);
            conn->exec(listen);
          }
          set_up(listener_down_);
          delay_ms = 50;
          if (was_down) deliver(StoreWakeup{StoreWakeup::Kind::reconnected, {}});
          was_down = false;
        } catch (const std::exception& e) {
          conn.reset();
          set_down(listener_down_, e.what());
          was_down = true;
          wait_readable(-1, delay_ms);
          delay_ms = std::min<int64_t>(delay_ms * 2, options_.reconnect_max_delay_ms);
          continue;
        }
      }
      wait_readable(conn->socket(), 1'000);
      if (!conn->consume_input() || !conn->ok()) {
        set_down(listener_down_, PQerrorMessage(conn->handle()));
        conn.reset();
        was_down = true;
        continue;
      }
      for (auto& [channel, payload] : conn->notifications()) {
        if (channel == jobs_channel_)
          deliver(StoreWakeup{StoreWakeup::Kind::jobs_due, {}});
        else if (channel == cancel_channel_)
          deliver(StoreWakeup{StoreWakeup::Kind::cancel_requested, payload});
      }
    }
  }

  // Waits until `fd` is readable, close() writes to the wake pipe, or the timeout passes.
  void wait_readable(int fd, int64_t timeout_ms) {
    pollfd fds[2] = {{wake_pipe_[0], POLLIN, 0}, {fd, POLLIN, 0}};
    ::poll(fds, fd >= 0 ? 2 : 1, static_cast<int>(timeout_ms));
  }

  // ---- writer ------------------------------------------------------------------------------

  void submit(WriteOp op) {
    std::lock_guard lock(mutex_);
    if (closed_) throw StoreError(pg::kPgErrorCode, "store '" + display_ + "' is closed");
    queue_.push_back(std::move(op));
    ++submitted_;
    work_cv_.notify_one();
  }

  void submit_and_wait(std::function<void(WriteContext&)> apply) {
    struct Waiter {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
      std::exception_ptr error;
      void signal(std::exception_ptr e) {
        std::lock_guard l(m);
        if (done) return;
        error = e;
        done = true;
        cv.notify_one();
      }
    };
    auto waiter = std::make_shared<Waiter>();
    WriteOp op;
    op.apply = std::move(apply);
    op.caller_waits = true;
    op.committed = [waiter] { waiter->signal(nullptr); };
    op.failed = [waiter](std::exception_ptr e) { waiter->signal(e); };
    submit(std::move(op));
    std::unique_lock l(waiter->m);
    waiter->cv.wait(l, [&] { return waiter->done; });
    if (waiter->error) std::rethrow_exception(waiter->error);
  }

  void writer_loop() {
    std::vector<WriteOp> batch, popped;
    for (;;) {
      std::vector<ProgressUpdate> progress;
      size_t queued_ops = 0;
      {
        std::unique_lock lock(mutex_);
        work_cv_.wait(lock,
                      [&] { return !queue_.empty() || !pending_progress_.empty() || closed_; });
        if (queue_.empty() && pending_progress_.empty() && closed_) break;
        for (auto& [seq, p] : pending_progress_) progress.push_back(std::move(p));
        pending_progress_.clear();
        side_in_flight_ = !progress.empty();
        queued_ops = std::min(queue_.size(), static_cast<size_t>(options_.max_batch_ops));
        popped.clear();
        for (size_t i = 0; i < queued_ops; ++i) {
          popped.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      // Progress first (a job's end in the same batch then overwrites it); every other write in
      // submission order, each run of consecutive ends of attempts as one statement.
      batch.clear();
      if (!progress.empty()) batch.push_back(progress_op(std::move(progress)));
      std::vector<Outcome> run;
      for (auto& op : popped) {
        if (op.outcome) {
          run.push_back(std::move(*op.outcome));
          continue;
        }
        if (!run.empty()) batch.push_back(finish_op(std::move(run)));
        run.clear();
        batch.push_back(std::move(op));
      }
      if (!run.empty()) batch.push_back(finish_op(std::move(run)));
      run_batch(batch);
      {
        std::lock_guard lock(mutex_);
        completed_ += queued_ops;
        side_in_flight_ = false;
        done_cv_.notify_all();
      }
    }
    std::lock_guard lock(mutex_);
    writer_exited_ = true;
    done_cv_.notify_all();
  }

  static void append_finish_row(std::string& out, const Outcome& o) {
    JsonRow row(out);
    const bool requeue = o.to == Status::queued;
    row.field("seq", o.rowid).field("owner", o.owner).field("status", std::string(to_string(o.to)));
    row.field("result", o.result_json)
        .field("error", o.error)
        .field("error_detail", o.error_detail);
    row.field("progress", o.progress).field("pcur", o.progress_current);
    row.field("ptot", o.progress_total).field("message", o.message);
    row.field("stage", non_empty(o.stage)).field("outcome", o.outcome_json);
    if (requeue) {
      row.null("completed_at").field("run_at", o.run_at).field("queued_at", o.at);
    } else {
      row.field("completed_at", o.at).null("run_at").null("queued_at");
    }
    row.field("uncount", o.release ? 1 : 0);
    if (o.started_at)
      row.field("started_at", o.started_at);
    else
      row.null("started_at");
    row.field("at", o.at).field("attempt", o.attempt);
  }

  // An end that matched nothing: if the job is running another attempt (taken back and claimed
  // again since, even by this owner), the end is a stale attempt's, refused: say so.
  static void refuse_stale_end(WriteContext& w, const Outcome& o) {
    Result r = w.conn.exec("SELECT attempts FROM jobs WHERE seq = $1 AND status = 'running'",
                           Params().add(o.rowid));
    if (!r.rows() || r.integer(0, 0) == o.attempt) return;
    std::fprintf(stderr,
                 "jobforge: refused the end (%s) of attempt %d of job %s: the job is running "
                 "attempt %lld now\n",
                 std::string(to_string(o.to)).c_str(), o.attempt, o.job_id.c_str(),
                 static_cast<long long>(r.integer(0, 0)));
  }

  WriteOp finish_op(std::vector<Outcome> outcomes) {
    auto batch = std::make_shared<std::string>("[");
    for (const Outcome& o : outcomes) {
      if (batch->size() > 1) *batch += ',';
      append_finish_row(*batch, o);
    }
    *batch += ']';
    WriteOp op;
    op.apply = [batch, outcomes = std::move(outcomes)](WriteContext& w) mutable {
      std::set<int64_t> matched;
      w.conn.exec("SAVEPOINT finish_batch");
      try {
        Result r = w.conn.exec(sql::kFinishBatch, Params().add(*batch));
        for (int i = 0; i < r.rows(); ++i) matched.insert(r.integer(i, 0));
        w.conn.exec("RELEASE SAVEPOINT finish_batch");
      } catch (const PgError& e) {
        if (e.transient()) throw;
        // One end the database refuses (a result JSONB cannot hold, say) must not cost the
        // others theirs, nor leave its job running: each is written alone, and a refused one
        // fails its job with the reason.
        w.conn.exec("ROLLBACK TO SAVEPOINT finish_batch");
        for (Outcome& o : outcomes) {
          for (int pass = 0; pass < 2; ++pass) {
            std::string one = "[";
            append_finish_row(one, o);
            one += ']';
            w.conn.exec("SAVEPOINT finish_one");
            try {
              Result r = w.conn.exec(sql::kFinishBatch, Params().add(one));
              if (r.rows()) matched.insert(o.rowid);
              w.conn.exec("RELEASE SAVEPOINT finish_one");
              break;
            } catch (const PgError& e1) {
              if (e1.transient()) throw;
              w.conn.exec("ROLLBACK TO SAVEPOINT finish_one");
              if (pass == 1) throw;
              o.to = Status::failed;
              o.release = false;
              o.result_json.reset();
              o.outcome_json.reset();
              o.error = std::string("the database refused the job's end: ") + e1.what();
            }
          }
        }
      }
      for (const Outcome& o : outcomes) {
        if (!matched.count(o.rowid)) {  // lease lost, cancelled from outside, or a stale attempt
          refuse_stale_end(w, o);
          continue;
        }
        w.transitions.push_back(Transition{o.job_id, o.job_type, Status::running, o.to, o.attempt,
                                           o.progress, o.result_json, o.error, o.at});
        if (o.started_at && !o.release)
          w.transitions.back().run_ms = std::max<int64_t>(0, o.at - o.started_at);
        if (o.to == Status::queued) w.jobs_due = true;
      }
    };
    op.failed = [](std::exception_ptr e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        std::fprintf(stderr, "jobforge: recording the end of jobs failed: %s\n", x.what());
      }
    };
    return op;
  }

  WriteOp progress_op(std::vector<ProgressUpdate> updates) {
    auto batch = std::make_shared<std::string>("[");
    for (const ProgressUpdate& p : updates) {
      if (batch->size() > 1) *batch += ',';
      JsonRow row(*batch);
      row.field("seq", p.rowid).field("progress", p.progress).field("pcur", p.current);
      row.field("ptot", p.total).field("message", p.message).field("stage", non_empty(p.stage));
      row.field("outcome", p.outcome_json).field("attempt", p.attempt);
    }
    *batch += ']';
    WriteOp op;
    op.apply = [batch](WriteContext& w) {
      // Progress is advisory: if the database refuses it, the job's end still carries the last.
      w.conn.exec("SAVEPOINT progress_batch");
      try {
        w.conn.exec(sql::kSaveProgressBatch, Params().add(*batch).add(now_ms()));
        w.conn.exec("RELEASE SAVEPOINT progress_batch");
      } catch (const PgError& e) {
        if (e.transient()) throw;
        w.conn.exec("ROLLBACK TO SAVEPOINT progress_batch");
        std::fprintf(stderr, "jobforge: progress not saved: %s\n", e.what());
      }
    };
    return op;
  }

  // Runs the operations in one transaction. A lost connection is re-opened with backoff and the
  // batch replayed (callers waiting longer than unavailable_timeout_ms get the error; background
  // writes wait for the server). Any other failure rolls back and replays each operation in a
  // transaction of its own, so only the bad one fails.
  void run_batch(std::vector<WriteOp>& batch) {
    if (batch.empty()) return;
    std::exception_ptr error;
    if (commit_with_reconnect(batch, &error)) return;
    if (batch.size() == 1) {
      report_failure(batch[0], error);
      return;
    }
    for (auto& op : batch) {
      std::vector<WriteOp> one;
      one.push_back(std::move(op));
      std::exception_ptr op_error;
      if (!commit_with_reconnect(one, &op_error)) report_failure(one[0], op_error);
    }
  }

  bool commit_with_reconnect(std::vector<WriteOp>& ops, std::exception_ptr* error) {
    int64_t delay_ms = 50;
    std::optional<SteadyClock::time_point> down_since;
    for (;;) {
      try {
        if (!writer_conn_ || !writer_conn_->ok()) {
          writer_conn_.reset();
          writer_conn_ = connect();
          deliver(StoreWakeup{StoreWakeup::Kind::reconnected, {}});
        }
        release_doubtful_claims(*writer_conn_);
        if (try_commit(ops, down_since.has_value())) {
          if (down_since) set_up(writer_down_);
          if (writes_failing_flag_.load(std::memory_order_acquire)) set_writes_failing("");
          return true;
        }
        // try_commit stored a non-transient error in last_error_.
        *error = last_error_;
        return false;
      } catch (const PgError& e) {
        if (!e.transient()) {
          *error = std::current_exception();
          return false;
        }
        if (e.connection_lost()) {
          writer_conn_.reset();
          set_down(writer_down_, e.what());
        }
        // Out of disk or memory: the server answers, so a caller gets the error at once; the
        // background writes (ends of jobs) are kept and retried until they commit.
        const bool exhausted = e.resources_exhausted();
        if (exhausted) set_writes_failing(e.what());
        if (!down_since) down_since = SteadyClock::now();
        // Give waiting callers their error after a while; keep the rest for the server's return.
        const auto now = SteadyClock::now();
        const auto budget = std::chrono::milliseconds(options_.unavailable_timeout_ms);
        const bool give_up_all = is_closed() && now - *down_since > budget;
        for (auto it = ops.begin(); it != ops.end();) {
          if (exhausted && it->caller_waits && !give_up_all) {
            report_failure(*it, std::current_exception());
            it = ops.erase(it);
          } else if (give_up_all || (it->caller_waits && now - it->submitted > budget)) {
            report_failure(*it, std::make_exception_ptr(StoreError(
                                    pg::kPgConnectionLost,
                                    "PostgreSQL at " + display_ + " is unavailable: " + e.what())));
            it = ops.erase(it);
          } else {
            ++it;
          }
        }
        if (exhausted) refuse_waiting_callers(std::current_exception());
        if (ops.empty()) return true;
      } catch (...) {
        *error = std::current_exception();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      delay_ms = std::min<int64_t>(delay_ms * 2, options_.reconnect_max_delay_ms);
    }
  }

  // One attempt at the transaction. Returns false (with last_error_) for a failure that a replay
  // will not fix; throws PgError for a transient one.
  bool try_commit(std::vector<WriteOp>& ops, bool replay_after_loss) {
    WriteContext w{*writer_conn_, {}, replay_after_loss, false, {}};
    try {
      pg::Transaction txn(*writer_conn_);
      for (auto& op : ops) op.apply(w);
      if (!w.transitions.empty()) apply_workflow_effects(w);
      if (!w.transitions.empty()) record_stats(w);
      if (w.jobs_due) notify_jobs_due(*writer_conn_);
      for (const auto& owner : w.cancel_owners)
        writer_conn_->exec("SELECT pg_notify($1, $2)", Params().add(cancel_channel_).add(owner));
      txn.commit();
    } catch (const PgError& e) {
      if (e.transient()) throw;
      last_error_ = std::current_exception();
      return false;
    } catch (...) {
      last_error_ = std::current_exception();
      return false;
    }
    CommitListener listener;
    {
      std::lock_guard lock(mutex_);
      listener = listener_cb_;
    }
    if (listener && !w.transitions.empty()) listener(w.transitions);
    for (auto& op : ops)
      if (op.committed) op.committed();
    return true;
  }

  void record_stats(WriteContext& w) {
    const auto sums = window_stats::sum_transitions(w.transitions);
    int64_t newest = 0;
    // In key order: concurrent writers of several processes lock these rows in the same order.
    for (auto& [key, x] : sums) {
      if (x.empty()) continue;
      newest = std::max(newest, key.first);
      w.conn.exec(sql::kAddStats, Params()
                                      .add(key.first)
                                      .add(key.second)
                                      .add(x.created)
                                      .add(x.completed)
                                      .add(x.failed)
                                      .add(x.cancelled)
                                      .add(x.timeout)
                                      .add(x.retried)
                                      .add(x.runs)
                                      .add(x.run_ms));
      for (auto& [bin, n] : x.bins)
        w.conn.exec(sql::kAddRunHist, Params().add(key.first).add(key.second).add(bin).add(n));
    }
    if (newest - last_stats_prune_ >= window_stats::kPruneEvery) {
      prune_stats(w.conn, newest - window_stats::kKeepBuckets);
      last_stats_prune_ = newest;
    }
  }

  // Deletes statistics buckets before `first_kept`.
  static void prune_stats(Connection& c, int64_t first_kept) {
    c.exec(sql::kPruneStats, Params().add(first_kept));
    c.exec(sql::kPruneRunHist, Params().add(first_kept));
  }

  StatsDetail stats_detail_on(Connection& c, int64_t now, int64_t window_ms,
                              int64_t rate_window_ms) {
    window_stats::DetailBuilder builder(now, window_ms, rate_window_ms);
    {
      Result r = c.exec(sql::kTypeCounts);
      for (int i = 0; i < r.rows(); ++i)
        if (auto status = parse_status(r.text(i, 1)))
          builder.add_count(r.text(i, 0), *status, r.integer(i, 2));
    }
    {
      Result r = c.exec(sql::kWindowStats,
                        Params().add(builder.first_bucket).add(builder.rate_first_bucket));
      for (int i = 0; i < r.rows(); ++i) {
        window_stats::Sums sums;
        sums.created = r.integer(i, 2);
        sums.completed = r.integer(i, 3);
        sums.failed = r.integer(i, 4);
        sums.cancelled = r.integer(i, 5);
        sums.timeout = r.integer(i, 6);
        sums.retried = r.integer(i, 7);
        sums.runs = r.integer(i, 8);
        sums.run_ms = r.integer(i, 9);
        builder.add_window(r.text(i, 0), r.boolean(i, 1), sums);
      }
    }
    {
      Result r = c.exec(sql::kWindowRunHist, Params().add(builder.first_bucket));
      for (int i = 0; i < r.rows(); ++i)
        builder.add_hist(r.text(i, 0), static_cast<int>(r.integer(i, 1)), r.integer(i, 2));
    }
    StatsDetail d = builder.finish();
    {
      Result r = c.exec(sql::kOldestDue, Params().add(now));
      const int64_t oldest = r.is_null(0, 0) ? 0 : r.integer(0, 0);
      d.oldest_due_age_ms = oldest ? std::max<int64_t>(0, now - oldest) : 0;
      d.due = r.integer(0, 1);
    }
    return d;
  }

  void report_failure(WriteOp& op, std::exception_ptr error) {
    if (op.failed) {
      op.failed(error);
      return;
    }
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: a background write to '%s' failed: %s\n", display_.c_str(),
                   e.what());
    }
  }

  std::string url_;
  PostgresOptions options_;
  std::string display_;  // the URL without its password, for messages
  std::string jobs_channel_, cancel_channel_;

  std::unique_ptr<Connection> writer_conn_;  // writer thread only (and the constructor)
  std::exception_ptr last_error_;            // writer thread only
  int64_t last_stats_prune_ = 0;             // writer thread only

  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int open_ = 0;

  std::mutex health_mutex_;
  std::string writer_down_, listener_down_, pool_down_;  // why each is down; empty: up
  std::string writes_failing_;  // guarded by health_mutex_; empty: writes succeed
  int64_t writes_failing_since_ms_ = 0;
  std::atomic<bool> writes_failing_flag_{false};

  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<WriteOp> queue_;
  std::map<int64_t, ProgressUpdate> pending_progress_;
  bool side_in_flight_ = false;  // finishes or progress taken by the writer, not yet committed
  uint64_t submitted_ = 0, completed_ = 0;
  bool closed_ = false, writer_exited_ = false;
  std::vector<std::string> doubtful_claims_;
  CommitListener listener_cb_;
  std::function<void(const StoreWakeup&)> wakeup_cb_;

  int wake_pipe_[2] = {-1, -1};
  std::thread writer_;
  std::thread listener_;
};

}  // namespace

bool is_postgres_url(const std::string& path) noexcept {
  return path.rfind("postgresql://", 0) == 0 || path.rfind("postgres://", 0) == 0;
}

std::unique_ptr<Store> open_postgres_store(const std::string& url, const PostgresOptions& options) {
  return std::make_unique<PgStore>(url, options);
}

std::unique_ptr<Store> open_store(const std::string& path, const SqliteOptions& sqlite,
                                  const PostgresOptions& postgres) {
  if (is_postgres_url(path)) return open_postgres_store(path, postgres);
  return open_sqlite_store(path, sqlite);
}

}  // namespace jobforge
