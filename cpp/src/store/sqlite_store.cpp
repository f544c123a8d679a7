// SqliteStore: WAL, one writer connection owned by one writer thread that group-commits every
// queued operation, and a pool of reader connections for queries (WAL: readers never block it).
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
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "jobforge/errors.hpp"
#include "jobforge/store.hpp"
#include "store/sqlite_db.hpp"
#include "store/sqlite_sql.hpp"
#include "store/window_stats.hpp"

namespace jobforge {
namespace {

using sqlite::Database;
using sqlite::ScopedReset;
using sqlite::Statement;
using sqlite::StatementCache;
namespace sql = sqlite::sql;

constexpr int kOpenFlags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

bool is_transient(const StoreError& e) {
  const int primary = e.code() & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
}

// A failure of the disk rather than of the operation (disk full, I/O error): the same write
// succeeds once space is freed or the device is back. Returns SQLite's code, or 0.
int storage_failure(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const StoreError& e) {
    const int primary = e.code() & 0xff;
    if (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN)
      return e.code();
  } catch (...) {
  }
  return 0;
}

std::string utc_text(int64_t ms) {
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
}

Job read_job(const Statement& s) {
  Job j;
  j.rowid = s.get_int(0);
  j.id = s.get_text(1);
  j.type = s.get_text(2);
  j.status = parse_status(s.get_text(3)).value_or(Status::created);
  j.priority = static_cast<int>(s.get_int(4));
  j.payload_json = s.get_text(5);
  j.progress = static_cast<int>(s.get_int(6));
  j.progress_current = s.get_double(7);
  j.progress_total = s.get_double(8);
  j.message = s.get_text(9);
  j.result_json = s.get_optional_text(10);
  j.error = s.get_optional_text(11);
  j.error_detail = s.get_optional_text(12);
  j.attempts = static_cast<int>(s.get_int(13));
  j.max_attempts = static_cast<int>(s.get_int(14));
  j.timeout_ms = s.is_null(15) ? s.get_int(16) * 1000 : s.get_int(15);
  j.retry_delay_ms = s.is_null(17) ? 1000 : s.get_int(17);
  j.parent_id = s.get_optional_text(18);
  j.user_initiated = s.get_int(19) != 0;
  j.cancel_requested = s.get_int(20) != 0;
  j.created_at = s.get_int(21);
  j.queued_at = s.get_int(22);
  j.started_at = s.get_int(23);
  j.completed_at = s.get_int(24);
  j.run_at = s.get_int(25);
  j.timeout_at = s.get_int(26);
  j.lease_owner = s.get_text(27);
  j.lease_expires_at = s.get_int(28);
  j.backoff = s.is_null(29) ? "fixed" : s.get_text(29);
  j.stage = s.get_text(30);
  j.outcome_json = s.get_optional_text(31);
  j.queue = s.is_null(32) ? "default" : s.get_text(32);
  j.unique_key = s.get_optional_text(33);
  return j;
}

WorkerInfo read_worker(const Statement& s) {
  WorkerInfo w;
  w.id = s.get_text(0);
  w.hostname = s.get_text(1);
  w.pid = s.get_int(2);
  w.version = s.get_text(3);
  w.started_at = s.get_int(4);
  w.heartbeat_at = s.get_int(5);
  w.state = s.get_text(6);
  w.claim_mode = s.get_text(7);
  w.singleton_role = s.get_text(8);
  return w;
}

std::string in_list(const std::vector<std::string>& values, int first_param) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ", ";
    out += "?" + std::to_string(first_param + static_cast<int>(i));
  }
  return out.empty() ? "NULL" : out;
}

// The changes one transaction makes to the counts per (type, status). The store keeps
// job_type_counts itself, one upsert per (type, status) and transaction (row triggers cost more
// than the writes they follow); every statement that inserts a job or changes a status reports
// here what it changed. Deletes are counted by their trigger.
class CountDeltas {
 public:
  void add(const std::string& type, Status status, int64_t n) {
    for (auto& d : deltas_)
      if (d.status == status && d.type == type) {
        d.n += n;
        return;
      }
    deltas_.push_back(Delta{type, status, n});
  }
  void move(const std::string& type, Status from, Status to) {
    if (from == to) return;
    add(type, from, -1);
    add(type, to, 1);
  }
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& d : deltas_)
      if (d.n != 0) f(d.type, d.status, d.n);
  }

 private:
  struct Delta {
    std::string type;
    Status status;
    int64_t n;
  };
  std::vector<Delta> deltas_;
};

// What an operation sees inside the writer's transaction.
struct WriteContext {
  Database& db;
  StatementCache& statements;
  std::vector<Transition> transitions;
  std::vector<int64_t> rejected_starts;
  CountDeltas counts;
  // Undoes changes to the store's memory (jobs held, starts written) if the transaction rolls
  // back: a write that is retried later must find that memory as it was.
  std::vector<std::function<void()>> on_rollback;
};

// One unit of work for the writer. apply() may run more than once (a batch that fails is rolled
// back and its operations replayed one by one), so it keeps its results in its own state.
// An operation without `failed` is a background write (the end of an attempt, log lines, a
// start, progress, a heartbeat): nobody waits for it, so a failure of the disk (full, I/O
// error) must not drop it. It is kept, in order, and retried with backoff until it commits.
struct WriteOp {
  std::function<void(WriteContext&)> apply;
  std::function<void()> committed;                  // optional
  std::function<void(std::exception_ptr)> failed;   // optional
  // Order inside a transaction: ends of attempts and other updates first (0), then claims (1),
  // which thus see those ends, then inserts (2), which a claim in memory must not see before
  // they are committed.
  int phase = 0;
};
enum Phase { kUpdates = 0, kClaims = 1, kInserts = 2 };

class SqliteStore final : public Store {
 public:
  SqliteStore(const std::string& path, const SqliteOptions& options)
      : path_(path), options_(options), writer_db_(path, kOpenFlags, options.busy_timeout_ms),
        writer_statements_(writer_db_) {
    configure(writer_db_);
    migrate();
    // Checkpoints leave the commit path: SQLite's automatic checkpoint runs inside the commit that
    // crosses 1,000 WAL pages (copying them into the database and syncing it), so one enqueue in
    // a hundred paid milliseconds. This hook replaces it and hands the work to a thread of its
    // own (a PASSIVE checkpoint on its own connection: it never blocks a writer or a reader).
    sqlite3_wal_hook(writer_db_.handle(), &SqliteStore::on_wal_commit, this);
    writer_ = std::thread([this] { writer_loop(); });
  }

  ~SqliteStore() override { close(); }

  std::string health() override {
    std::lock_guard lock(mutex_);
    if (!failing_since_ms_) return "ok";
    const int64_t for_s = std::max<int64_t>(0, now_ms() - failing_since_ms_) / 1000;
    return "degraded: writes failing since " + utc_text(failing_since_ms_) + " (" +
           std::to_string(for_s) + " s): " + failing_error_ + "; " +
           std::to_string(stalled_count_) + " write(s) kept and retried";
  }

  void set_commit_listener(CommitListener listener) override {
    std::lock_guard lock(mutex_);
    listener_ = std::move(listener);
  }

  void set_start_rejected_listener(
      std::function<void(const std::vector<int64_t>&)> listener) override {
    std::lock_guard lock(mutex_);
    start_rejected_listener_ = std::move(listener);
  }

  // ---- writes ------------------------------------------------------------------------------

  void insert(const std::vector<NewJob>& jobs) override {
    if (jobs.empty()) return;
    submit_and_wait(kInserts, [&jobs](WriteContext& w) {
      Statement& ins = w.statements.get(sql::kInsertJob);
      Statement& exists = w.statements.get(sql::kJobExists);
      for (const NewJob& j : jobs) {
        if (j.parent_id) {
          ScopedReset r(exists);
          exists.bind(1, *j.parent_id);
          if (!exists.step())
            throw ValidationError("parent", "parent job '" + *j.parent_id + "' does not exist");
        }
        ScopedReset r(ins);
        ins.bind(1, j.id).bind(2, j.type).bind(3, j.priority).bind(4, j.payload_json);
        ins.bind(5, j.max_attempts).bind(6, j.parent_id).bind(7, j.user_initiated ? 1 : 0);
        ins.bind(8, j.timeout_ms).bind(9, j.retry_delay_ms).bind(10, j.created_at).bind(11, j.run_at);
        ins.bind(12, j.backoff);
        ins.run();
        w.counts.add(j.type, Status::queued, 1);
        w.transitions.push_back(
            Transition{j.id, j.type, Status::created, Status::queued, 0, 0, {}, {}, j.created_at});
      }
    });
  }

  std::vector<Job> claim(const ClaimRequest& req) override {
    std::vector<Job> claimed;
    if (req.limit <= 0 || req.types.empty()) return claimed;
    const bool limited = req.max_running_type > 0 || req.max_running_queue > 0 || req.rate_per_ms > 0;
    if (req.durable) {
      const std::string sql_text = std::string(sql::kClaimPrefix) + in_list(req.types, 5) +
                                   queue_filter(req, 5 + static_cast<int>(req.types.size())) +
                                   sql::kClaimSuffix;
      submit_and_wait(kClaims, [&](WriteContext& w) {
        claimed.clear();
        const int limit = limited ? allowed_by_limits(w, req) : req.limit;
        if (limit <= 0) return;
        Statement& s = w.statements.get_dynamic(sql_text);
        ScopedReset r(s);
        s.bind(1, req.now).bind(2, req.owner).bind(3, req.now + req.lease_ms).bind(4, limit);
        bind_filter(s, req, 5);
        while (s.step()) claimed.push_back(read_job(s));
        for (const Job& j : claimed) {
          w.counts.move(j.type, Status::queued, Status::running);
          w.transitions.push_back(Transition{j.id, j.type, Status::queued, Status::running,
                                             j.attempts, j.progress, {}, {}, req.now});
        }
        if (req.rate_per_ms > 0) spend_tokens(w, req, static_cast<int>(claimed.size()));
      });
    } else {
      // A read inside the writer's transaction: it sees the ends applied before it and none of
      // the inserts after it, and it returns without waiting for the commit.
      const std::string sql_text = std::string(sql::kSelectDuePrefix) + in_list(req.types, 3) +
                                   queue_filter(req, 3 + static_cast<int>(req.types.size())) +
                                   sql::kSelectDueSuffix;
      submit_and_wait(
          kClaims,
          [&](WriteContext& w) {
            const int limit = limited ? allowed_by_limits(w, req) : req.limit;
            if (limit <= 0) return;
            Statement& s = w.statements.get_dynamic(sql_text);
            ScopedReset r(s);
            s.bind(1, req.now).bind(2, static_cast<int64_t>(limit + held_.size()));
            bind_filter(s, req, 3);
            while (static_cast<int>(claimed.size()) < limit && s.step()) {
              if (held_.count(s.get_int(0))) continue;
              claimed.push_back(read_job(s));
            }
            for (const Job& j : claimed) held_.insert(j.rowid);
            if (req.rate_per_ms > 0) spend_tokens(w, req, static_cast<int>(claimed.size()));
          },
          /*return_after_apply=*/true);
    }
    std::sort(claimed.begin(), claimed.end(), [](const Job& a, const Job& b) {
      if (a.priority != b.priority) return a.priority < b.priority;
      if (a.run_at != b.run_at) return a.run_at < b.run_at;
      return a.rowid < b.rowid;
    });
    return claimed;
  }

  void mark_started(StartInfo start) override {
    std::lock_guard lock(mutex_);
    if (closed_) throw StoreError(SQLITE_MISUSE, "store '" + path_ + "' is closed");
    pending_starts_[start.rowid] = std::move(start);
    work_cv_.notify_one();
  }

  void release(std::vector<int64_t> rowids) override {
    if (rowids.empty()) return;
    submit(WriteOp{[this, r = std::move(rowids)](WriteContext&) {
                     for (int64_t id : r) held_.erase(id);
                   },
                   {}, {}, kUpdates});
  }

  void finish(Outcome o) override {
    bool coalesced = false;  // its running state need never be written
    if (!o.keep_start) {
      std::lock_guard lock(mutex_);
      coalesced = pending_starts_.erase(o.rowid) > 0;
    }
    submit(WriteOp{[this, o = std::move(o), coalesced](WriteContext& w) {
                     apply_finish(w, o, coalesced);
                   },
                   {}, {}, kUpdates});
  }

  void save_progress(std::vector<ProgressUpdate> updates) override {
    if (updates.empty()) return;
    submit(WriteOp{[u = std::move(updates)](WriteContext& w) {
                     Statement& s = w.statements.get(sql::kSaveProgress);
                     const int64_t now = now_ms();
                     for (const auto& p : u) {
                       ScopedReset r(s);
                       s.bind(1, p.progress).bind(2, p.current).bind(3, p.total);
                       s.bind(4, p.message).bind(5, now).bind(6, p.rowid);
                       s.bind(7, p.stage.empty() ? std::optional<std::string>{}
                                                 : std::optional<std::string>{p.stage});
                       s.bind(8, p.outcome_json).bind(9, p.attempt);
                       s.run();
                     }
                   },
                   {}, {}});
  }

  CancelResult cancel(const std::string& job_id, int64_t now) override {
    CancelResult result = CancelResult::not_found;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      result = CancelResult::not_found;
      Statement& q = w.statements.get(sql::kStatusById);
      int64_t rowid = 0;
      std::string type;
      Status status = Status::created;
      int attempts = 0;
      {
        ScopedReset r(q);
        q.bind(1, job_id);
        if (!q.step()) return;
        rowid = q.get_int(0);
        type = q.get_text(1);
        status = parse_status(q.get_text(2)).value_or(Status::created);
        attempts = static_cast<int>(q.get_int(3));
      }
      bool batch_parent = false;
      if (status == Status::running) {  // a batch parent has no worker: it ends here
        Statement& b = w.statements.get(sql::kIsBatchParent);
        ScopedReset rb(b);
        b.bind(1, rowid);
        batch_parent = b.step() && b.get_int(0) != 0;
      }
      if (status == Status::running && !batch_parent) {
        Statement& s = w.statements.get(sql::kRequestCancel);
        ScopedReset r(s);
        s.bind(1, now).bind(2, rowid).run();
        result = CancelResult::requested;
        return;
      }
      if (!can_transition(status, Status::cancelled)) {
        result = CancelResult::not_cancellable;
        return;
      }
      Statement& s = w.statements.get(sql::kCancelQueued);
      ScopedReset r(s);
      s.bind(1, now).bind(2, rowid).bind(3, to_string(status)).run();
      result = CancelResult::cancelled;
      w.counts.move(type, status, Status::cancelled);
      w.transitions.push_back(Transition{job_id, type, status, Status::cancelled, attempts, 0, {},
                                         std::string("cancelled"), now});
    });
    return result;
  }

  int64_t cancel_all(int64_t now, std::vector<std::string>* running_ids) override {
    int64_t count = 0;
    std::vector<std::string> running;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      count = 0;
      running.clear();
      for (Status from : statuses_leading_to(Status::cancelled)) {
        if (from == Status::running) continue;  // running jobs are asked, below
        Statement& s = w.statements.get(sql::kCancelAllWithStatus);
        ScopedReset r(s);
        s.bind(1, now).bind(2, to_string(from));
        while (s.step()) {
          ++count;
          w.counts.move(s.get_text(1), from, Status::cancelled);
          w.transitions.push_back(Transition{s.get_text(0), s.get_text(1), from,
                                             Status::cancelled, static_cast<int>(s.get_int(2)), 0,
                                             {}, std::string("cancelled"), now});
        }
      }
      Statement& s = w.statements.get(sql::kRequestCancelAllRunning);
      ScopedReset r(s);
      s.bind(1, now);
      while (s.step()) running.push_back(s.get_text(0));
      count += static_cast<int64_t>(running.size());
    });
    if (running_ids) *running_ids = std::move(running);
    return count;
  }

  bool retry(const std::string& job_id, int64_t now) override {
    bool ok = false;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      ok = false;
      Statement& q = w.statements.get(sql::kStatusById);
      int64_t rowid = 0;
      std::string type;
      Status status;
      {
        ScopedReset r(q);
        q.bind(1, job_id);
        if (!q.step()) return;
        rowid = q.get_int(0);
        type = q.get_text(1);
        auto parsed = parse_status(q.get_text(2));
        if (!parsed) return;
        status = *parsed;
      }
      // A manual retry takes a finished, unsuccessful job back; running → queued is the engine's.
      if (!is_final(status) || !can_transition(status, Status::queued)) return;
      Statement& s = w.statements.get(sql::kRetry);
      ScopedReset r(s);
      s.bind(1, now).bind(2, rowid).bind(3, to_string(status)).run();
      ok = w.db.changes() == 1;
      if (!ok) return;
      w.counts.move(type, status, Status::queued);
      w.transitions.push_back(Transition{job_id, type, status, Status::queued, 0, 0, {}, {}, now});
    });
    return ok;
  }

  std::string register_worker(const WorkerInfo& wi,
                              const std::function<bool(const WorkerInfo&)>& is_dead,
                              bool allow_memory) override {
    std::string mode;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      mode = allow_memory && !other_live_worker(w, wi.id, is_dead) ? "memory" : "durable";
      if (!wi.singleton_role.empty()) {
        // A dead holder must not keep the role: mark dead rows first, then let the unique
        // index decide between live ones.
        std::vector<std::string> dead;
        Statement& list = w.statements.get(sql::kListWorkers);
        {
          ScopedReset r(list);
          while (list.step()) {
            WorkerInfo other = read_worker(list);
            if (other.id != wi.id && other.state == "running" && is_dead(other))
              dead.push_back(other.id);
          }
        }
        for (const auto& id : dead) {
          Statement& s = w.statements.get(sql::kSetWorkerState);
          ScopedReset r(s);
          s.bind(1, "dead").bind(2, id).run();
        }
      }
      Statement& s = w.statements.get(sql::kUpsertWorker);
      ScopedReset r(s);
      s.bind(1, wi.id).bind(2, wi.hostname).bind(3, wi.pid).bind(4, wi.version);
      s.bind(5, wi.started_at).bind(6, wi.heartbeat_at).bind(7, mode).bind(8, wi.singleton_role);
      try {
        s.run();
      } catch (const StoreError& e) {
        if ((e.code() & 0xff) != SQLITE_CONSTRAINT) throw;
        std::string holder = "another worker";
        Statement& list = w.statements.get(sql::kListWorkers);
        ScopedReset lr(list);
        while (list.step()) {
          WorkerInfo other = read_worker(list);
          if (other.state == "running" && other.singleton_role == wi.singleton_role)
            holder = "worker " + other.id + " (host " + other.hostname + ", pid " +
                     std::to_string(other.pid) + ")";
        }
        throw SingletonTaken("singleton role '" + wi.singleton_role + "' is already held by " +
                             holder + "; stop it first or use another role");
      }
    });
    return mode;
  }

  bool set_claim_mode(const std::string& worker_id, const std::string& mode,
                      const std::function<bool(const WorkerInfo&)>& is_dead) override {
    bool ok = false;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      ok = mode != "memory" || !other_live_worker(w, worker_id, is_dead);
      if (!ok) return;
      Statement& s = w.statements.get(sql::kSetClaimMode);
      ScopedReset r(s);
      s.bind(1, mode).bind(2, worker_id).run();
    });
    return ok;
  }

  void heartbeat(const std::string& worker_id, int64_t now, int64_t lease_ms) override {
    submit(WriteOp{[=](WriteContext& w) {
                     Statement& hb = w.statements.get(sql::kHeartbeatWorker);
                     {
                       ScopedReset r(hb);
                       hb.bind(1, now).bind(2, worker_id).run();
                     }
                     Statement& ext = w.statements.get(sql::kExtendLeases);
                     ScopedReset r(ext);
                     ext.bind(1, now + lease_ms).bind(2, worker_id).run();
                   },
                   {}, {}});
  }

  void deregister_worker(const std::string& worker_id) override {
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      Statement& s = w.statements.get(sql::kSetWorkerState);
      ScopedReset r(s);
      s.bind(1, "stopped").bind(2, worker_id).run();
    });
  }

  std::vector<WorkerInfo> workers() override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kListWorkers);
    ScopedReset r(s);
    std::vector<WorkerInfo> out;
    while (s.step()) out.push_back(read_worker(s));
    return out;
  }

  void publish_types(const std::string& worker_id, const std::vector<PublishedType>& types,
                     int64_t now) override {
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      for (const auto& t : types) {
        Statement& s = w.statements.get(sql::kPublishType);
        ScopedReset r(s);
        s.bind(1, worker_id).bind(2, t.type).bind(3, t.options_json).bind(4, now).run();
      }
      {
        Statement& s = w.statements.get(sql::kUnpublishTypes);
        ScopedReset r(s);
        s.bind(1, worker_id).bind(2, now).run();
      }
      Statement& s = w.statements.get(sql::kDeleteSupersededTypes);
      ScopedReset r(s);
      s.bind(1, worker_id).run();
    });
  }

  std::vector<PublishedType> published_types() override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kListPublishedTypes);
    ScopedReset r(s);
    std::vector<PublishedType> out;
    while (s.step())
      out.push_back(
          PublishedType{s.get_text(0), s.get_text(1), s.get_text(2), s.get_int(3), s.get_int(4)});
    return out;
  }

  int64_t recover_orphans(int64_t now, const std::string& self_id,
                          const std::function<bool(const WorkerInfo&)>& is_dead) override {
    int64_t recovered = 0;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      recovered = 0;
      std::vector<std::string> dead;
      {
        Statement& s = w.statements.get(sql::kListWorkers);
        ScopedReset r(s);
        while (s.step()) {
          WorkerInfo wi = read_worker(s);
          if (wi.state == "running" && wi.id != self_id && is_dead(wi)) dead.push_back(wi.id);
        }
      }
      for (const auto& id : dead) {
        Statement& s = w.statements.get(sql::kSetWorkerState);
        ScopedReset r(s);
        s.bind(1, "dead").bind(2, id).run();
      }
      {
        Statement& s = w.statements.get(sql::kDeleteOldWorkers);
        ScopedReset r(s);
        s.bind(1, now - 24 * 3600 * 1000).run();
      }
      Statement& s = w.statements.get(sql::kRecoverOrphans);
      ScopedReset r(s);
      s.bind(1, now).bind(2, self_id);
      while (s.step()) {
        ++recovered;
        const Status to = parse_status(s.get_text(2)).value_or(Status::queued);
        std::optional<std::string> error;
        if (to == Status::failed) error = "worker was lost while running the job";
        w.counts.move(s.get_text(1), Status::running, to);
        w.transitions.push_back(Transition{s.get_text(0), s.get_text(1), Status::running, to,
                                           static_cast<int>(s.get_int(3)), 0, {}, error, now});
      }
    });
    return recovered;
  }

  std::vector<std::string> cancel_requests(const std::string& owner) override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kCancelRequests);
    ScopedReset r(s);
    s.bind(1, owner);
    std::vector<std::string> ids;
    while (s.step()) ids.push_back(s.get_text(0));
    return ids;
  }

  // ---- reads -------------------------------------------------------------------------------

  std::optional<Job> get(const std::string& job_id) override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kGetJob);
    ScopedReset r(s);
    s.bind(1, job_id);
    if (!s.step()) return std::nullopt;
    return read_job(s);
  }

  std::vector<Job> list(const JobQuery& q) override {
    std::string text = sql::kListPrefix;
    std::vector<std::string> params;
    std::vector<std::string> where;
    std::vector<Status> statuses = q.statuses;
    if (q.status) statuses.push_back(*q.status);
    if (!statuses.empty()) {
      std::string clause = "status IN (";
      for (size_t i = 0; i < statuses.size(); ++i) {
        params.emplace_back(to_string(statuses[i]));
        clause += (i ? ", ?" : "?") + std::to_string(params.size());
      }
      where.push_back(clause + ")");
    }
    if (q.type) {
      params.push_back(*q.type);
      where.push_back("type = ?" + std::to_string(params.size()));
    }
    if (q.parent_id) {
      params.push_back(*q.parent_id);
      where.push_back("parent_job_id = ?" + std::to_string(params.size()));
    }
    for (size_t i = 0; i < where.size(); ++i) text += (i ? " AND " : " WHERE ") + where[i];
    text += " ORDER BY created_at DESC, rowid DESC LIMIT ?" + std::to_string(params.size() + 1) +
            " OFFSET ?" + std::to_string(params.size() + 2);
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get_dynamic(text);
    ScopedReset r(s);
    for (size_t i = 0; i < params.size(); ++i) s.bind(static_cast<int>(i) + 1, params[i]);
    s.bind(static_cast<int>(params.size()) + 1, static_cast<int64_t>(q.limit));
    s.bind(static_cast<int>(params.size()) + 2, static_cast<int64_t>(q.offset));
    std::vector<Job> out;
    while (s.step()) out.push_back(read_job(s));
    return out;
  }

  void append_logs(std::function<std::vector<LogRecord>()> drain) override {
    // The op keeps the drained lines: a batch replayed after a failure writes them again.
    struct State {
      bool drained = false;
      std::vector<LogRecord> lines;
    };
    auto state = std::make_shared<State>();
    WriteOp op;
    op.apply = [state, drain = std::move(drain)](WriteContext& w) {
      if (!state->drained) {
        state->lines = drain();
        state->drained = true;
      }
      Statement& s = w.statements.get(sql::kInsertLog);
      for (LogRecord& l : state->lines) {
        ScopedReset r(s);
        s.bind(1, l.job_id).bind(2, l.attempt).bind(3, l.at).bind(4, static_cast<int>(l.level));
        s.bind(5, l.stage).bind(6, l.message).bind(7, l.fields_json);
        s.run();
        l.id = w.db.last_insert_rowid();
      }
      if (state->lines.empty()) return;
      Transition t;
      t.from = t.to = Status::running;
      t.at = state->lines.back().at;
      t.log_lines = std::make_shared<const std::vector<LogRecord>>(state->lines);
      w.transitions.push_back(std::move(t));
    };
    op.phase = kUpdates;
    submit(std::move(op));
  }

  std::vector<LogRecord> logs(const LogQuery& q) override {
    std::string text = sql::kLogsPrefix;
    if (q.since > 0) text += " AND at >= ?5";
    text += q.newest ? " ORDER BY id DESC LIMIT ?4" : " ORDER BY id LIMIT ?4";
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get_dynamic(text);
    ScopedReset r(s);
    s.bind(1, q.job_id).bind(2, q.after_id).bind(3, static_cast<int>(q.min_level));
    s.bind(4, static_cast<int64_t>(q.limit));
    if (q.since > 0) s.bind(5, q.since);
    std::vector<LogRecord> out;
    while (s.step()) {
      LogRecord l;
      l.id = s.get_int(0);
      l.job_id = s.get_text(1);
      l.attempt = static_cast<int>(s.get_int(2));
      l.at = s.get_int(3);
      l.level = static_cast<LogLevel>(s.get_int(4));
      l.stage = s.get_text(5);
      l.message = s.get_text(6);
      l.fields_json = s.get_text(7);
      out.push_back(std::move(l));
    }
    if (q.newest) std::reverse(out.begin(), out.end());
    return out;
  }

  StatsDetail stats_detail(int64_t now, int64_t window_ms, int64_t rate_window_ms) override {
    write_pending_stats();
    auto reader = readers_.acquire(*this);
    // One read transaction: every figure from the same commit (queued and due agree).
    struct ReadTxn {
      Database& db;
      explicit ReadTxn(Database& d) : db(d) { db.exec("BEGIN"); }
      ~ReadTxn() {
        try {
          db.exec("COMMIT");
        } catch (...) {
        }
      }
    } txn(reader->db);
    window_stats::DetailBuilder builder(now, window_ms, rate_window_ms);
    {
      Statement& s = reader->statements.get(sql::kTypeCounts);
      ScopedReset r(s);
      while (s.step())
        if (auto status = parse_status(s.get_text(1)))
          builder.add_count(s.get_text(0), *status, s.get_int(2));
    }
    {
      Statement& s = reader->statements.get(sql::kWindowStats);
      ScopedReset r(s);
      s.bind(1, builder.first_bucket).bind(2, builder.rate_first_bucket);
      while (s.step()) {
        window_stats::Sums sums;
        sums.created = s.get_int(2);
        sums.completed = s.get_int(3);
        sums.failed = s.get_int(4);
        sums.cancelled = s.get_int(5);
        sums.timeout = s.get_int(6);
        sums.retried = s.get_int(7);
        sums.runs = s.get_int(8);
        sums.run_ms = s.get_int(9);
        builder.add_window(s.get_text(0), s.get_int(1) != 0, sums);
      }
    }
    {
      Statement& s = reader->statements.get(sql::kWindowRunHist);
      ScopedReset r(s);
      s.bind(1, builder.first_bucket);
      while (s.step())
        builder.add_hist(s.get_text(0), static_cast<int>(s.get_int(1)), s.get_int(2));
    }
    StatsDetail d = builder.finish();
    {
      Statement& s = reader->statements.get(sql::kOldestDue);
      int64_t oldest = 0;
      for (int p = priority::min; p <= priority::max; ++p) {
        ScopedReset r(s);
        s.bind(1, p).bind(2, now);
        if (s.step() && !s.is_null(0)) {
          const int64_t at = s.get_int(0);
          if (!oldest || at < oldest) oldest = at;
        }
      }
      d.oldest_due_age_ms = oldest ? std::max<int64_t>(0, now - oldest) : 0;
    }
    if (d.queued) {
      Statement& s = reader->statements.get(sql::kDelayedCount);
      int64_t delayed = 0;
      for (int p = priority::min; p <= priority::max; ++p) {
        ScopedReset r(s);
        s.bind(1, p).bind(2, now);
        if (s.step()) delayed += s.get_int(0);
      }
      d.due = std::max<int64_t>(0, d.queued - delayed);
    }
    return d;
  }

  std::string integrity_check() override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get_dynamic("PRAGMA quick_check");
    ScopedReset r(s);
    std::string out;
    while (s.step()) {
      if (!out.empty()) out += "; ";
      out += s.get_text(0);
    }
    return out;
  }

  Stats stats() override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kStats);
    ScopedReset r(s);
    Stats st;
    while (s.step()) {
      const int64_t n = s.get_int(1);
      st.total += n;
      if (auto status = parse_status(s.get_text(0))) st.by_status[static_cast<int>(*status)] = n;
    }
    return st;
  }

  std::optional<int64_t> next_run_at(const std::vector<std::string>& types) override {
    if (types.empty()) return std::nullopt;
    const std::string text = std::string(sql::kNextRunAtPrefix) + in_list(types, 1) + ")";
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get_dynamic(text);
    ScopedReset r(s);
    for (size_t i = 0; i < types.size(); ++i) s.bind(static_cast<int>(i) + 1, types[i]);
    if (!s.step() || s.is_null(0)) return std::nullopt;
    return s.get_int(0);
  }

  std::optional<int64_t> next_run_at_filtered(const ClaimRequest& filter) override {
    if (filter.types.empty()) return std::nullopt;
    if (filter.queues.empty() && filter.exclude_queues.empty()) return next_run_at(filter.types);
    const std::string text = std::string(sql::kNextRunAtPrefix) + in_list(filter.types, 1) +
                             queue_filter(filter, 1 + static_cast<int>(filter.types.size())) + ")";
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get_dynamic(text);
    ScopedReset r(s);
    bind_filter(s, filter, 1);
    if (!s.step() || s.is_null(0)) return std::nullopt;
    return s.get_int(0);
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
    submit_and_wait(kInserts, [&](WriteContext& w) {
      ids.clear();
      std::vector<std::pair<std::string, int64_t>> queued_in;  // queue → queued jobs (checked ones)
      for (const NewJob& j : jobs) ids.push_back(insert_workflow_job(w, j, limits, queued_in));
    });
    return ids;
  }

  std::vector<Job> dependencies(const std::string& job_id) override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kDependencies);
    ScopedReset r(s);
    s.bind(1, job_id);
    std::vector<Job> out;
    while (s.step()) out.push_back(read_job(s));
    return out;
  }

  void upsert_schedule(const Schedule& sc) override {
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      Statement& s = w.statements.get(sql::kUpsertSchedule);
      ScopedReset r(s);
      s.bind(1, sc.name).bind(2, sc.cron).bind(3, sc.timezone).bind(4, sc.type);
      s.bind(5, sc.payload_json);
      if (sc.priority) s.bind(6, *sc.priority); else s.bind_null(6);
      s.bind(7, sc.queue).bind(8, sc.misfire).bind(9, sc.next_fire_at).bind(10, now_ms());
      s.run();
    });
  }

  bool delete_schedule(const std::string& name) override {
    bool deleted = false;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      Statement& s = w.statements.get(sql::kDeleteSchedule);
      ScopedReset r(s);
      s.bind(1, name).run();
      deleted = w.db.changes() > 0;
    });
    return deleted;
  }

  std::vector<Schedule> schedules() override {
    auto reader = readers_.acquire(*this);
    Statement& s = reader->statements.get(sql::kListSchedules);
    ScopedReset r(s);
    std::vector<Schedule> out;
    while (s.step()) {
      Schedule sc;
      sc.name = s.get_text(0);
      sc.cron = s.get_text(1);
      sc.timezone = s.get_text(2);
      sc.type = s.get_text(3);
      sc.payload_json = s.get_text(4);
      if (!s.is_null(5)) sc.priority = static_cast<int>(s.get_int(5));
      sc.queue = s.get_text(6);
      sc.misfire = s.get_text(7);
      sc.next_fire_at = s.get_int(8);
      sc.last_fire_at = s.get_int(9);
      sc.last_job_id = s.get_text(10);
      sc.created_at = s.get_int(11);
      out.push_back(std::move(sc));
    }
    return out;
  }

  bool fire_schedule(const std::string& name, int64_t expected_next, int64_t next,
                     const std::optional<NewJob>& job) override {
    bool fired = false;
    submit_and_wait(kInserts, [&](WriteContext& w) {
      fired = false;
      Statement& s = w.statements.get(sql::kAdvanceSchedule);
      ScopedReset r(s);
      s.bind(1, next).bind(2, expected_next);
      if (job) s.bind(3, job->id); else s.bind_null(3);
      s.bind(4, now_ms()).bind(5, name).run();
      if (w.db.changes() == 0) return;  // another process fired it
      fired = true;
      if (!job) return;
      std::vector<std::pair<std::string, int64_t>> queued_in;
      insert_workflow_job(w, *job, InsertLimits{}, queued_in);
    });
    return fired;
  }

  int64_t delete_finished(int64_t cutoff, int limit) override {
    int64_t deleted = 0;
    submit_and_wait(kUpdates, [&](WriteContext& w) {
      deleted = 0;
      std::vector<std::string> ids;
      for (Status st : {Status::completed, Status::failed, Status::cancelled, Status::timeout}) {
        if (static_cast<int>(ids.size()) >= limit) break;
        Statement& s = w.statements.get(sql::kDeleteFinished);
        ScopedReset r(s);
        s.bind(1, to_string(st)).bind(2, cutoff).bind(3, static_cast<int64_t>(limit) - static_cast<int64_t>(ids.size()));
        while (s.step()) ids.push_back(s.get_text(0));
      }
      deleted = static_cast<int64_t>(ids.size());
      if (!ids.empty() && exists(w, sql::kAnyDependency)) {
        Statement& d = w.statements.get(sql::kDeleteDependenciesOf);
        for (const auto& id : ids) {
          ScopedReset r(d);
          d.bind(1, id).run();
        }
      }
      // Statistics buckets older than the cutoff go too.
      prune_stats(w, cutoff / window_stats::kBucketMs);
    });
    return deleted;
  }

  // While the disk fails, writes kept for a retry count as done here (flush returns; they commit
  // once the disk works again, and health() says "degraded" until then).
  void flush() override {
    write_pending_stats();  // the windowed figures too
    std::unique_lock lock(mutex_);
    const uint64_t target = submitted_;
    done_cv_.wait(lock, [&] {
      return (completed_ >= target && pending_starts_.empty() && !starts_in_flight_) ||
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
    {
      std::lock_guard lock(checkpoint_mutex_);
      checkpoint_stop_ = true;
      checkpoint_cv_.notify_all();
    }
    if (checkpointer_.joinable()) checkpointer_.join();
  }

 private:
  struct Reader {
    explicit Reader(const std::string& path, int busy_ms)
        : db(path, SQLITE_OPEN_READWRITE, busy_ms), statements(db) {
      db.exec("PRAGMA query_only = ON");
    }
    Database db;
    StatementCache statements;
  };

  class ReaderPool {
   public:
    struct Lease {
      sqlite::ForkShield shield;  // a read holds WAL locks too (see sqlite_db.hpp)
      ReaderPool* pool;
      std::unique_ptr<Reader> reader;
      Reader* operator->() { return reader.get(); }
      ~Lease() {
        if (reader) pool->release(std::move(reader));
      }
      Lease(ReaderPool* p, std::unique_ptr<Reader> r, sqlite::ForkShield s)
          : shield(std::move(s)), pool(p), reader(std::move(r)) {}
      Lease(Lease&&) = default;
    };
    Lease acquire(SqliteStore& store) {
      // The shield first, never while holding mutex_: a lease ending inside its shield takes
      // mutex_, so waiting for a fork with mutex_ held would deadlock.
      sqlite::ForkShield shield;
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return !idle_.empty() || open_ < store.options_.readers; });
      if (!idle_.empty()) {
        auto r = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(r), std::move(shield));
      }
      ++open_;
      lock.unlock();
      try {
        return Lease(this, std::make_unique<Reader>(store.path_, store.options_.busy_timeout_ms),
                     std::move(shield));
      } catch (...) {
        lock.lock();
        --open_;
        cv_.notify_one();
        throw;
      }
    }
    void release(std::unique_ptr<Reader> r) {
      std::lock_guard lock(mutex_);
      idle_.push_back(std::move(r));
      cv_.notify_one();
    }

   private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::unique_ptr<Reader>> idle_;
    int open_ = 0;
  };

  // Writes the end of an attempt, if this owner still holds the job. A job claimed in memory
  // whose running state was never written is still 'queued' in the file; otherwise it is
  // 'running' under the owner's lease. `coalesced`: its start was never written, so the
  // job-started transition goes out now.
  void apply_finish(WriteContext& w, const Outcome& o, bool coalesced) {
    bool start_written = false;
    if (o.claimed_in_memory) {
      const int64_t rowid = o.rowid;
      if (held_.erase(rowid)) w.on_rollback.emplace_back([this, rowid] { held_.insert(rowid); });
      start_written = starts_written_.erase(rowid) > 0;
      if (start_written)
        w.on_rollback.emplace_back([this, rowid] { starts_written_.insert(rowid); });
    }
    const bool requeue = o.to == Status::queued;
    auto bind_common = [&](Statement& s) {
      s.bind(1, to_string(o.to)).bind(2, o.result_json).bind(3, o.error);
      s.bind(4, o.error_detail).bind(5, o.progress).bind(6, o.progress_current);
      s.bind(7, o.progress_total).bind(8, o.message);
      if (requeue) {
        s.bind_null(9).bind(10, o.run_at).bind(11, o.at);
      } else {
        s.bind(9, o.at).bind_null(10).bind_null(11);
      }
      s.bind(13, o.at).bind(14, o.rowid);
      if (o.started_at) s.bind(18, o.started_at); else s.bind_null(18);
      s.bind(19, o.stage.empty() ? std::optional<std::string>{} : std::optional<std::string>{o.stage});
      s.bind(20, o.outcome_json);
    };
    auto finish_held = [&] {
      Statement& s = w.statements.get(sql::kFinishHeld);
      ScopedReset r(s);
      bind_common(s);
      s.bind(12, o.attempt - (o.release ? 1 : 0));
      if (o.queued_at) s.bind(21, o.queued_at); else s.bind_null(21);
      s.run();
      return w.db.changes() > 0;
    };
    auto finish_running = [&] {
      Statement& s = w.statements.get(sql::kFinishRunning);
      ScopedReset r(s);
      bind_common(s);
      s.bind(15, o.owner).bind(17, o.release ? 1 : 0).bind(22, o.attempt);
      s.run();
      return w.db.changes() > 0;
    };
    // Try the form the job most likely is in; a job claimed in memory may be in the other (its
    // start written by a switch to durable claims, say).
    const bool held_first = o.claimed_in_memory && !start_written;
    Status from = held_first ? Status::queued : Status::running;
    bool written = held_first ? finish_held() : finish_running();
    if (!written && o.claimed_in_memory) {
      from = held_first ? Status::running : Status::queued;
      written = held_first ? finish_running() : finish_held();
    }
    if (!written) {  // lease lost, cancelled from outside, or the end of a stale attempt
      refuse_stale_end(w, o);
      return;
    }
    w.counts.move(o.job_type, from, o.to);
    if (coalesced && !start_written)
      w.transitions.push_back(Transition{o.job_id, o.job_type, Status::queued, Status::running,
                                         o.attempt, 0, {}, {}, o.started_at});
    w.transitions.push_back(Transition{o.job_id, o.job_type, Status::running, o.to, o.attempt,
                                       o.progress, o.result_json, o.error, o.at});
    if (o.started_at && !o.release)
      w.transitions.back().run_ms = std::max<int64_t>(0, o.at - o.started_at);
  }

  // An end that matched nothing: if the job is running another attempt (taken back and claimed
  // again since, even by this owner), the end is a stale attempt's, refused: say so.
  void refuse_stale_end(WriteContext& w, const Outcome& o) {
    Statement& q = w.statements.get(sql::kStatusById);
    ScopedReset r(q);
    q.bind(1, o.job_id);
    if (!q.step() || q.get_text(2) != "running" || q.get_int(3) == o.attempt) return;
    const int64_t current = q.get_int(3);
    std::fprintf(stderr,
                 "jobforge: refused the end (%s) of attempt %d of job %s: the job is running "
                 "attempt %lld now\n",
                 std::string(to_string(o.to)).c_str(), o.attempt, o.job_id.c_str(),
                 static_cast<long long>(current));
  }

  static bool other_live_worker(WriteContext& w, const std::string& self_id,
                                const std::function<bool(const WorkerInfo&)>& is_dead) {
    Statement& s = w.statements.get(sql::kListWorkers);
    ScopedReset r(s);
    while (s.step()) {
      WorkerInfo other = read_worker(s);
      if (other.id != self_id && other.state == "running" && !is_dead(other)) return true;
    }
    return false;
  }

  // ---- workflows: helpers inside the writer's transaction ----------------------------------

  static std::string queue_filter(const ClaimRequest& req, int first_param) {
    std::string out;
    if (!req.queues.empty()) {
      out += ") AND +queue IN (" + in_list(req.queues, first_param);
      first_param += static_cast<int>(req.queues.size());
    }
    if (!req.exclude_queues.empty())
      out += ") AND +queue NOT IN (" + in_list(req.exclude_queues, first_param);
    return out;
  }

  static void bind_filter(Statement& s, const ClaimRequest& req, int first_param) {
    int i = first_param;
    for (const auto& t : req.types) s.bind(i++, t);
    for (const auto& q : req.queues) s.bind(i++, q);
    for (const auto& q : req.exclude_queues) s.bind(i++, q);
  }

  static bool exists(WriteContext& w, const char* query) {
    Statement& s = w.statements.get(query);
    ScopedReset r(s);
    return s.step();
  }

  static int64_t count_of(WriteContext& w, const char* query, const std::string& key) {
    Statement& s = w.statements.get(query);
    ScopedReset r(s);
    s.bind(1, key);
    return s.step() ? s.get_int(0) : 0;
  }

  // How many jobs this claim may take under its concurrency and rate limits, counted in the
  // claim's own transaction (so every process sees the same counts).
  static int allowed_by_limits(WriteContext& w, const ClaimRequest& req) {
    int64_t limit = req.limit;
    if (req.max_running_type > 0) {
      const int64_t running = req.durable ? count_of(w, sql::kRunningOfType, req.types.front())
                                          : req.local_running_type;
      limit = std::min<int64_t>(limit, req.max_running_type - running);
    }
    if (req.max_running_queue > 0 && !req.queues.empty()) {
      const int64_t running = req.durable ? count_of(w, sql::kRunningInQueue, req.queues.front())
                                          : req.local_running_queue;
      limit = std::min<int64_t>(limit, req.max_running_queue - running);
    }
    if (req.rate_per_ms > 0) limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens(w, req)));
    return static_cast<int>(std::max<int64_t>(0, limit));
  }

  static double tokens(WriteContext& w, const ClaimRequest& req) {
    Statement& s = w.statements.get(sql::kReadBucket);
    ScopedReset r(s);
    s.bind(1, req.rate_key);
    if (!s.step()) return req.rate_burst;
    const double elapsed = static_cast<double>(std::max<int64_t>(0, req.now - s.get_int(1)));
    return std::min(req.rate_burst, s.get_double(0) + elapsed * req.rate_per_ms);
  }

  static void spend_tokens(WriteContext& w, const ClaimRequest& req, int taken) {
    const double left = tokens(w, req) - taken;
    Statement& s = w.statements.get(sql::kWriteBucket);
    ScopedReset r(s);
    s.bind(1, req.rate_key).bind(2, left).bind(3, req.now).run();
  }

  // Inserts one job with workflow options; returns its id, or that of the job holding its key.
  std::string insert_workflow_job(WriteContext& w, const NewJob& j, const InsertLimits& limits,
                                  std::vector<std::pair<std::string, int64_t>>& queued_in) {
    if (j.unique_key) {
      Statement& q = w.statements.get(sql::kUniqueHolder);
      ScopedReset r(q);
      q.bind(1, *j.unique_key);
      if (q.step()) {
        const auto status = parse_status(q.get_text(2)).value_or(Status::queued);
        const int64_t ended = q.get_int(3), keep_for = q.get_int(4);
        if (!is_final(status) || ended + keep_for > j.created_at) return q.get_text(1);
        const int64_t holder = q.get_int(0);
        ScopedReset r2(q);  // done reading: release the key from the old job
        Statement& u = w.statements.get(sql::kReleaseUniqueKey);
        ScopedReset ru(u);
        u.bind(1, holder).run();
      }
    }
    if (j.parent_id) {
      Statement& e = w.statements.get(sql::kJobExists);
      ScopedReset r(e);
      e.bind(1, *j.parent_id);
      if (!e.step())
        throw ValidationError("parent", "parent job '" + *j.parent_id + "' does not exist");
    }
    Status status = j.batch_policy ? (j.batch_children ? Status::running : Status::completed)
                                   : Status::queued;
    std::optional<std::string> error;
    int64_t pending = 0;
    for (const auto& dep : j.depends_on) {
      Statement& d = w.statements.get(sql::kDependencyState);
      ScopedReset r(d);
      d.bind(1, dep);
      if (!d.step())
        throw ValidationError("depends_on", "dependency '" + dep + "' does not exist");
      const auto dep_status = parse_status(d.get_text(0)).value_or(Status::queued);
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
          Statement& c = w.statements.get(sql::kCountQueuedInQueue);
          ScopedReset r(c);
          c.bind(1, j.queue).bind(2, max);
          queued_in.emplace_back(j.queue, c.step() ? c.get_int(0) : 0);
          it = std::prev(queued_in.end());
        }
        if (it->second >= max) throw QueueFull(j.queue, max);
        ++it->second;
      }
    }
    const bool final_now = is_final(status);
    std::optional<std::string> result;
    if (status == Status::completed) result = R"({"total": 0})";
    Statement& ins = w.statements.get(sql::kInsertWorkflowJob);
    ScopedReset r(ins);
    ins.bind(1, j.id).bind(2, j.type).bind(3, j.priority).bind(4, j.payload_json);
    ins.bind(5, j.max_attempts).bind(6, j.parent_id).bind(7, j.user_initiated ? 1 : 0);
    ins.bind(8, j.timeout_ms).bind(9, j.retry_delay_ms).bind(10, j.created_at).bind(11, j.run_at);
    ins.bind(12, j.backoff).bind(13, to_string(status)).bind(14, j.queue).bind(15, j.unique_key);
    ins.bind(16, j.unique_for_ms).bind(17, pending);
    if (j.run_if_dependency_fails) ins.bind(18, "run"); else ins.bind_null(18);
    ins.bind(19, j.batch_policy).bind(20, static_cast<double>(j.batch_children)).bind(21, error);
    if (final_now) ins.bind(22, j.created_at); else ins.bind_null(22);
    if (status == Status::running) ins.bind(23, j.created_at); else ins.bind_null(23);
    ins.bind(24, result).bind(25, status == Status::completed ? 100 : 0);
    ins.run();
    w.counts.add(j.type, status, 1);
    if (!j.depends_on.empty()) {
      Statement& d = w.statements.get(sql::kInsertDependency);
      for (const auto& dep : j.depends_on) {
        ScopedReset rd(d);
        d.bind(1, dep).bind(2, j.id).run();
      }
    }
    if (status != Status::created)
      w.transitions.push_back(Transition{j.id, j.type, Status::created, status, 0,
                                         status == Status::completed ? 100 : 0, result, error,
                                         j.created_at});
    return j.id;
  }

  // What a status change means for other jobs, in the same transaction: a batch parent counts
  // its final children (and ends with the last); a batch parent that ends early cancels its
  // unfinished children; dependents of a final job are released or cancelled. Changes made here
  // are transitions too, so they cascade (a cancelled dependent cancels its own dependents).
  // Costs one indexed probe per transaction with final transitions while no batch or
  // dependency exists.
  void apply_workflow_effects(WriteContext& w) {
    std::optional<bool> any_batch, any_dependency;
    const int64_t now = now_ms();
    for (size_t i = 0; i < w.transitions.size(); ++i) {
      const Transition t = w.transitions[i];  // a copy: the vector grows below
      if (t.from == t.to) continue;
      const bool to_final = is_final(t.to);
      const bool reopened = is_final(t.from) && t.to == Status::queued;  // a manual retry
      if (!to_final && !reopened) continue;
      if (!any_batch) any_batch = exists(w, sql::kAnyBatch);
      if (*any_batch) batch_effects(w, t, to_final, now);
      if (!to_final) continue;
      if (!any_dependency) any_dependency = exists(w, sql::kAnyDependency);
      if (*any_dependency) dependency_effects(w, t, now);
    }
  }

  void batch_effects(WriteContext& w, const Transition& t, bool to_final, int64_t now) {
    std::optional<std::string> parent, policy;
    {
      Statement& s = w.statements.get(sql::kParentAndPolicy);
      ScopedReset r(s);
      s.bind(1, t.job_id);
      if (!s.step()) return;
      parent = s.get_optional_text(0);
      policy = s.get_optional_text(1);
    }
    if (policy && to_final && t.to != Status::completed) {
      // A batch parent ended early (cancelled, failed fast): its unfinished children end too.
      Statement& c = w.statements.get(sql::kCancelChildren);
      std::vector<Transition> ended;
      for (Status from : {Status::created, Status::queued}) {
        ScopedReset r(c);
        c.bind(1, "batch " + t.job_id + " ended " + std::string(to_string(t.to))).bind(2, now);
        c.bind(3, t.job_id).bind(4, to_string(from));
        while (c.step()) {
          w.counts.move(c.get_text(1), from, Status::cancelled);
          ended.push_back(Transition{c.get_text(0), c.get_text(1), from, Status::cancelled,
                                     static_cast<int>(c.get_int(2)), 0, {},
                                     std::string("batch cancelled"), now});
        }
      }
      for (auto& e : ended) w.transitions.push_back(std::move(e));
      Statement& rq = w.statements.get(sql::kRequestCancelChildren);
      ScopedReset r3(rq);
      rq.bind(1, now).bind(2, t.job_id).run();
    }
    if (!parent) return;
    Statement& u = w.statements.get(sql::kBatchChildFinal);
    int64_t rowid, current, total, attempts;
    std::string type, parent_policy;
    {
      ScopedReset r(u);
      u.bind(1, *parent).bind(2, to_final ? 1 : -1).bind(3, now);
      if (!u.step()) return;  // not a batch, or it already ended
      rowid = u.get_int(0);
      type = u.get_text(1);
      current = static_cast<int64_t>(u.get_double(2));
      total = static_cast<int64_t>(u.get_double(3));
      parent_policy = u.get_text(4);
      attempts = u.get_int(5);
    }
    const bool child_failed = t.to == Status::failed || t.to == Status::timeout;
    if (parent_policy == "fail_fast" && child_failed) {
      end_batch(w, *parent, rowid, type, attempts, Status::failed, std::nullopt,
                "child " + t.job_id + " " + std::string(to_string(t.to)) +
                    (t.error ? ": " + *t.error : std::string()),
                now);
      return;
    }
    if (!to_final || current < total) return;
    // The last child ended: the summary counts children by final status.
        std::string result = "{\"total\": " + std::to_string(total);
    int64_t failed = 0;
    {
      Statement& c = w.statements.get(sql::kBatchChildCounts);
      ScopedReset r(c);
      c.bind(1, *parent);
      while (c.step()) {
        const std::string st = c.get_text(0);
        const int64_t n = c.get_int(1);
        result += ", \"" + st + "\": " + std::to_string(n);
        if (st == "failed" || st == "timeout") failed += n;
      }
    }
    result += "}";
    if (parent_policy == "fail" && failed > 0)
      end_batch(w, *parent, rowid, type, attempts, Status::failed, result,
                std::to_string(failed) + " of " + std::to_string(total) + " children failed", now);
    else
      end_batch(w, *parent, rowid, type, attempts, Status::completed, result, std::nullopt, now);
  }

  void end_batch(WriteContext& w, const std::string& id, int64_t rowid, const std::string& type,
                 int64_t attempts, Status to, const std::optional<std::string>& result,
                 const std::optional<std::string>& error, int64_t now) {
    Statement& e = w.statements.get(sql::kEndBatch);
    ScopedReset r(e);
    e.bind(1, to_string(to)).bind(2, result).bind(3, error).bind(4, now).bind(5, rowid).run();
    if (w.db.changes() == 0) return;
    w.counts.move(type, Status::running, to);
    w.transitions.push_back(Transition{id, type, Status::running, to, static_cast<int>(attempts),
                                       to == Status::completed ? 100 : 0, result, error, now});
  }

  void dependency_effects(WriteContext& w, const Transition& t, int64_t now) {
    std::vector<std::string> dependents;
    {
      Statement& s = w.statements.get(sql::kDependents);
      ScopedReset r(s);
      s.bind(1, t.job_id);
      while (s.step()) dependents.push_back(s.get_text(0));
    }
    for (const auto& id : dependents) {
      int64_t rowid;
      std::string type, on_failure;
      {
        Statement& q = w.statements.get(sql::kWaitingJob);
        ScopedReset r(q);
        q.bind(1, id);
        if (!q.step()) continue;  // not waiting any more (cancelled, say)
        rowid = q.get_int(0);
        type = q.get_text(1);
        on_failure = q.get_text(3);
      }
      if (t.to == Status::completed || on_failure == "run") {
        Statement& u = w.statements.get(sql::kDependencyDone);
        ScopedReset r(u);
        u.bind(1, now).bind(2, rowid);
        if (u.step() && u.get_text(0) == "queued") {
          w.counts.move(type, Status::created, Status::queued);
          w.transitions.push_back(
              Transition{id, type, Status::created, Status::queued, 0, 0, {}, {}, now});
        }
      } else {
        const std::string why = "dependency " + t.job_id + " ended " + std::string(to_string(t.to));
        Statement& c = w.statements.get(sql::kCancelWaiting);
        ScopedReset r(c);
        c.bind(1, why).bind(2, now).bind(3, rowid).run();
        if (w.db.changes() > 0) {
          w.counts.move(type, Status::created, Status::cancelled);
          w.transitions.push_back(
              Transition{id, type, Status::created, Status::cancelled, 0, 0, {}, why, now});
        }
      }
    }
  }

  void configure(Database& db) {
    db.exec(sql::kConnectionPragmas);  // also proves the file is a SQLite database
    db.exec(options_.synchronous_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
  }

  void migrate() {
    if (writer_db_.query_int("PRAGMA user_version") >= sql::kSchemaVersion) {
      check_version(writer_db_.query_int("PRAGMA user_version"));
      return;
    }
    // Several processes may open a new file at once (worker processes started together): the
    // version is read again under the write lock, so one of them migrates and the others find
    // the work done, instead of running a migration twice ("duplicate column name").
    sqlite::Transaction txn(writer_db_);
    const int64_t version = writer_db_.query_int("PRAGMA user_version");
    check_version(version);
    for (int v = static_cast<int>(version) + 1; v <= sql::kSchemaVersion; ++v) {
      writer_db_.exec(sql::kMigrations[v - 1]);
      writer_db_.exec(("PRAGMA user_version = " + std::to_string(v)).c_str());
    }
    txn.commit();
  }

  void check_version(int64_t version) const {
    if (version < 0)
      throw StoreError(SQLITE_CORRUPT, "database '" + path_ + "' has schema version " +
                                           std::to_string(version) +
                                           ", which no jobforge writes (a damaged header?)");
    if (version > sql::kSchemaVersion)
      throw StoreError(SQLITE_ERROR, "database '" + path_ + "' has schema version " +
                                         std::to_string(version) + ", newer than this jobforge (" +
                                         std::to_string(sql::kSchemaVersion) + ")");
  }

  void submit(WriteOp op) {
    std::lock_guard lock(mutex_);
    if (closed_) throw StoreError(SQLITE_MISUSE, "store '" + path_ + "' is closed");
    queue_.push_back(std::move(op));
    ++submitted_;
    work_cv_.notify_one();
  }

  // Submits and blocks until the operation is committed (or, with return_after_apply, until it
  // has run inside the writer's transaction: for reads); rethrows its error.
  void submit_and_wait(int phase, std::function<void(WriteContext&)> apply,
                       bool return_after_apply = false) {
    // Shared with the op: with return_after_apply the caller returns before the batch commits,
    // and a later failure of that batch must not touch the caller's (gone) stack frame.
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
    op.phase = phase;
    if (return_after_apply) {
      // Runs once: a replay of the batch must not deliver (or hold) the same rows twice.
      auto delivered = std::make_shared<bool>(false);
      op.apply = [apply = std::move(apply), delivered, waiter](WriteContext& w) {
        if (*delivered) return;
        apply(w);
        *delivered = true;
        waiter->signal(nullptr);
      };
    } else {
      op.apply = std::move(apply);
      op.committed = [waiter] { waiter->signal(nullptr); };
    }
    op.failed = [waiter](std::exception_ptr e) { waiter->signal(e); };
    // An idle writer: run it here (a claim in memory too: two thread hand-offs fewer between an
    // enqueue on an idle engine and its start).
    if (try_commit_here(op)) {
      if (waiter->error) std::rethrow_exception(waiter->error);
      return;
    }
    submit(std::move(op));
    std::unique_lock l(waiter->m);
    waiter->cv.wait(l, [&] { return waiter->done; });
    if (waiter->error) std::rethrow_exception(waiter->error);
  }

  // When the writer is idle and nothing is queued, the caller commits its own operation on its
  // own thread: a lone enqueue then costs no thread hand-off (two context switches). Whoever
  // holds writer_role_ uses the writer connection.
  bool try_commit_here(WriteOp& op) {
    std::unique_lock role(writer_role_, std::try_to_lock);
    if (!role.owns_lock()) return false;
    {
      std::lock_guard lock(mutex_);
      if (closed_ || !queue_.empty() || !pending_starts_.empty()) return false;
      ++submitted_;
    }
    std::vector<WriteOp> batch;
    batch.push_back(std::move(op));
    run_batch(batch);
    role.unlock();
    std::lock_guard lock(mutex_);
    ++completed_;
    done_cv_.notify_all();
    return true;
  }

  void writer_loop() {
    std::vector<WriteOp> batch;
    std::vector<StartInfo> starts;
    std::optional<std::chrono::steady_clock::time_point> give_up_at;  // closing with stalled writes
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        auto ready = [&] {
          return !queue_.empty() || !pending_starts_.empty() || closed_ || retry_now_;
        };
        if (stalled_count_ == 0) {
          work_cv_.wait(lock, ready);
        } else {
          work_cv_.wait_until(lock, retry_at_, ready);
          if (std::chrono::steady_clock::now() >= retry_at_) retry_now_ = true;
        }
        if (queue_.empty() && pending_starts_.empty() && closed_) {
          if (stalled_count_ == 0) break;
          const auto now = std::chrono::steady_clock::now();
          if (!give_up_at) give_up_at = now + kStallCloseBudget;
          if (now >= *give_up_at) {
            std::fprintf(stderr,
                         "jobforge: closing '%s' with %zu write(s) that could not be made (%s): "
                         "given up; their jobs are recovered when their leases expire\n",
                         path_.c_str(), stalled_count_, failing_error_.c_str());
            break;
          }
          if (!retry_now_ && now < retry_at_) {
            lock.unlock();
            std::this_thread::sleep_until(std::min(retry_at_, *give_up_at));
            lock.lock();
          }
          retry_now_ = true;
        }
      }
      // The role is taken before the batch leaves the queue: a caller committing its own write
      // (try_commit_here) then can never overtake operations queued before it.
      std::unique_lock role(writer_role_);
      bool retry_stalled = false;
      size_t popped = 0;
      {
        std::unique_lock lock(mutex_);
        if (queue_.empty() && pending_starts_.empty() && !retry_now_ && !closed_)
          continue;  // a caller took it meanwhile
        retry_stalled = stalled_.empty() || retry_now_;
        retry_now_ = false;
        if (options_.group_commit_window_us > 0 && !queue_.empty() &&
            queue_.size() < static_cast<size_t>(options_.max_batch_ops)) {
          work_cv_.wait_for(lock, std::chrono::microseconds(options_.group_commit_window_us), [&] {
            return queue_.size() >= static_cast<size_t>(options_.max_batch_ops) || closed_;
          });
        }
        const size_t n = std::min(queue_.size(), static_cast<size_t>(options_.max_batch_ops));
        batch.clear();
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        popped = n;
        starts.clear();
        for (auto& [rowid, start] : pending_starts_) starts.push_back(std::move(start));
        pending_starts_.clear();
        starts_in_flight_ = starts.size();
      }
      // Jobs that outlasted the commit window: their running state goes first in this batch.
      if (!starts.empty()) batch.insert(batch.begin(), write_starts_op(std::move(starts)));
      if (retry_stalled) {
        // The stalled writes first (they were submitted first), then the new ones.
        if (!stalled_.empty()) {
          batch.insert(batch.begin(), std::make_move_iterator(stalled_.begin()),
                       std::make_move_iterator(stalled_.end()));
          stalled_.clear();
        }
        std::stable_sort(batch.begin(), batch.end(),
                         [](const WriteOp& a, const WriteOp& b) { return a.phase < b.phase; });
        run_batch(batch);
      } else {
        // Before the next retry: background writes join the stalled ones (in order), callers'
        // writes are tried now (a caller gets its answer or its error at once).
        std::vector<WriteOp> callers;
        for (auto& op : batch) {
          if (op.failed)
            callers.push_back(std::move(op));
          else
            stalled_.push_back(std::move(op));
        }
        std::stable_sort(callers.begin(), callers.end(),
                         [](const WriteOp& a, const WriteOp& b) { return a.phase < b.phase; });
        run_batch(callers);
      }
      role.unlock();
      {
        std::lock_guard lock(mutex_);
        stalled_count_ = stalled_.size();
        if (stalled_count_ && retry_stalled) {  // the retry failed: back off
          retry_at_ = std::chrono::steady_clock::now() + stall_delay_;
          stall_delay_ = std::min(stall_delay_ * 2, std::chrono::milliseconds(kStallMaxDelay));
        }
        completed_ += popped;
        starts_in_flight_ = 0;
        done_cv_.notify_all();
      }
    }
    {
      std::lock_guard role(writer_role_);
      if (!pending_stats_.empty()) {  // the last windowed figures, before the connection goes
        flush_stats_now_ = true;
        std::exception_ptr error;
        if (!try_commit(nullptr, 0, &error)) {
          try {
            std::rethrow_exception(error);
          } catch (const std::exception& e) {
            std::fprintf(stderr, "jobforge: writing the last statistics to '%s' failed: %s\n",
                         path_.c_str(), e.what());
          }
        }
      }
    }
    std::lock_guard lock(mutex_);
    writer_exited_ = true;
    done_cv_.notify_all();
  }

  WriteOp write_starts_op(std::vector<StartInfo> starts) {
    return WriteOp{[this, starts = std::move(starts)](WriteContext& w) {
                     Statement& s = w.statements.get(sql::kMarkStarted);
                     for (const StartInfo& st : starts) {
                       // The same start may be recorded twice (by its worker, and by a switch
                       // to durable claims): write it once.
                       if (starts_written_.count(st.rowid)) continue;
                       ScopedReset r(s);
                       s.bind(1, st.attempt).bind(2, st.started_at).bind(3, st.owner);
                       s.bind(4, st.lease_expires_at).bind(5, st.rowid);
                       if (st.queued_at) s.bind(6, st.queued_at); else s.bind_null(6);
                       s.run();
                       if (w.db.changes() == 0) {  // cancelled from outside meanwhile
                         w.rejected_starts.push_back(st.rowid);
                         continue;
                       }
                       starts_written_.insert(st.rowid);
                       w.on_rollback.emplace_back(
                           [this, rowid = st.rowid] { starts_written_.erase(rowid); });
                       w.counts.move(st.job_type, Status::queued, Status::running);
                       w.transitions.push_back(Transition{st.job_id, st.job_type, Status::queued,
                                                          Status::running, st.attempt, 0, {}, {},
                                                          st.started_at});
                     }
                   },
                   {}, {}, kUpdates};
  }

  // Runs the operations in one transaction. If one fails, the whole batch is rolled back and each
  // operation is replayed in a transaction of its own, so only the bad one fails. When the disk
  // fails (full, I/O error), background writes are kept in stalled_ (in order) for a retry and
  // only the callers get the error (each caller's operation is tried once alone).
  void run_batch(std::vector<WriteOp>& batch) {
    if (batch.empty()) return;
    std::exception_ptr error;
    if (try_commit(batch.data(), batch.size(), &error)) return;
    if (storage_failure(error)) {
      note_write_failure(error);
      for (auto& op : batch) {
        if (!op.failed) {
          stall(std::move(op));
          continue;
        }
        std::exception_ptr op_error;
        if (batch.size() == 1)
          op_error = error;
        else if (try_commit(&op, 1, &op_error))
          continue;
        if (storage_failure(op_error)) note_write_failure(op_error);
        report_failure(op, op_error);
      }
      return;
    }
    if (batch.size() == 1) {
      report_failure(batch[0], error);
      return;
    }
    for (auto& op : batch) {
      std::exception_ptr op_error;
      if (try_commit(&op, 1, &op_error)) continue;
      if (storage_failure(op_error)) {
        note_write_failure(op_error);
        if (!op.failed) {
          stall(std::move(op));
          continue;
        }
      }
      report_failure(op, op_error);
    }
  }

  // ---- writes that failed for the disk's sake ------------------------------------------------
  // Background writes that hit a failing disk wait in stalled_, in submission order, and are
  // retried with backoff (kStallFirstDelay doubling to kStallMaxDelay) in one transaction, ahead
  // of the writes submitted since; a caller's write meanwhile is tried alone, at once, and gets
  // the error if it fails too. health() reports "degraded" from the first failure to the commit
  // that empties stalled_. At close the stalled writes are retried for kStallCloseBudget more,
  // then given up (their jobs stay running under leases that expire, and are recovered).
  static constexpr auto kStallFirstDelay = std::chrono::milliseconds(50);
  static constexpr auto kStallMaxDelay = std::chrono::milliseconds(2'000);
  static constexpr auto kStallCloseBudget = std::chrono::seconds(10);

  void stall(WriteOp op) {  // writer role
    stalled_.push_back(std::move(op));
    std::lock_guard lock(mutex_);
    stalled_count_ = stalled_.size();
  }

  void note_write_failure(const std::exception_ptr& error) {
    const int code = storage_failure(error);
    std::lock_guard lock(mutex_);
    if (!failing_since_ms_) {
      failing_since_ms_ = now_ms();
      std::string what;
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        what = e.what();
      }
      std::fprintf(stderr, "jobforge: writes to '%s' are failing (%s); kept and retried\n",
                   path_.c_str(), what.c_str());
    }
    failing_error_ = sqlite3_errstr(code);
    failing_.store(true, std::memory_order_release);
  }

  // After a commit: the disk works again once nothing is left to retry.
  void note_write_ok() {  // writer role
    if (!failing_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(mutex_);
    if (!stalled_.empty()) {  // a caller's write went through: retry the stalled ones now
      retry_now_ = true;
      work_cv_.notify_one();
      return;
    }
    if (failing_since_ms_)
      std::fprintf(stderr, "jobforge: writes to '%s' succeed again (failing for %lld ms)\n",
                   path_.c_str(), static_cast<long long>(now_ms() - failing_since_ms_));
    failing_since_ms_ = 0;
    failing_error_.clear();
    stall_delay_ = kStallFirstDelay;
    failing_.store(false, std::memory_order_release);
  }

  bool try_commit(WriteOp* ops, size_t n, std::exception_ptr* error) {
    for (int attempt = 0;; ++attempt) {
      WriteContext w{writer_db_, writer_statements_, {}, {}, {}, {}};
      window_stats::SumsByBucket fresh_stats;
      bool flush_stats = false;
      const int64_t changes_before = sqlite3_total_changes64(writer_db_.handle());
      try {
        sqlite::ForkShield shield;  // no fork() while the write lock is held (see sqlite_db.hpp)
        sqlite::Transaction txn(writer_db_);
        for (size_t i = 0; i < n; ++i) ops[i].apply(w);
        if (!w.transitions.empty()) apply_workflow_effects(w);
        fresh_stats = w.transitions.empty() ? window_stats::SumsByBucket{}
                                            : window_stats::sum_transitions(w.transitions);
        flush_stats = stats_due(fresh_stats.empty());
        if (flush_stats) write_stats(w, fresh_stats);
        write_counts(w);
        txn.commit();
      } catch (const StoreError& e) {
        for (auto it = w.on_rollback.rbegin(); it != w.on_rollback.rend(); ++it) (*it)();
        if (is_transient(e) && attempt < 200) {
          std::this_thread::sleep_for(std::chrono::milliseconds(std::min(5 * (attempt + 1), 100)));
          continue;
        }
        *error = std::current_exception();
        return false;
      } catch (...) {
        for (auto it = w.on_rollback.rbegin(); it != w.on_rollback.rend(); ++it) (*it)();
        *error = std::current_exception();
        return false;
      }
      // Only a commit that wrote something proves the disk takes writes again.
      if (sqlite3_total_changes64(writer_db_.handle()) != changes_before) note_write_ok();
      if (flush_stats) {
        pending_stats_.clear();
        last_stats_flush_ = std::chrono::steady_clock::now();
        flush_stats_now_ = false;
        stats_pending_.store(false, std::memory_order_release);
      } else if (!fresh_stats.empty()) {
        window_stats::merge(pending_stats_, std::move(fresh_stats));
        stats_pending_.store(true, std::memory_order_release);
      }
      CommitListener listener;
      std::function<void(const std::vector<int64_t>&)> rejected_listener;
      {
        std::lock_guard lock(mutex_);
        listener = listener_;
        rejected_listener = start_rejected_listener_;
      }
      if (listener && !w.transitions.empty()) listener(w.transitions);
      if (rejected_listener && !w.rejected_starts.empty()) rejected_listener(w.rejected_starts);
      for (size_t i = 0; i < n; ++i)
        if (ops[i].committed) ops[i].committed();
      return true;
    }
  }

  void write_counts(WriteContext& w) {
    w.counts.for_each([&](const std::string& type, Status status, int64_t n) {
      Statement& s = w.statements.get(sql::kAddCount);
      ScopedReset r(s);
      s.bind(1, type).bind(2, to_string(status)).bind(3, n).run();
    });
  }

  // The windowed figures (job_stats, job_stats_hist) are summed in memory and written at most
  // about once a second, with whatever transaction comes next: a lone enqueue then changes no
  // statistics page (one B-tree page fewer in its WAL append). A process that dies loses at most
  // the last second of windowed figures (never a job or a counter of jobs). stats_detail() and
  // flush() (an engine's stop) write this process's pending sums first, so its own figures are
  // never stale; a heartbeat carries them out for the other processes.
  static constexpr auto kStatsFlushEvery = std::chrono::milliseconds(1000);
  static constexpr size_t kStatsMaxPending = 256;  // (bucket, type) entries

  // This process's pending windowed figures, written now (before they are read, or at a stop).
  void write_pending_stats() {
    if (!stats_pending_.load(std::memory_order_acquire)) return;
    try {
      submit_and_wait(kUpdates, [this](WriteContext&) { flush_stats_now_ = true; });
    } catch (const StoreError&) {
      // closed (the writer wrote them on its way out), or the write failed: what is in the file
    }
  }

  bool stats_due(bool nothing_new) const {
    if (flush_stats_now_) return !pending_stats_.empty() || !nothing_new;
    if (pending_stats_.empty() && nothing_new) return false;
    return pending_stats_.size() >= kStatsMaxPending ||
           std::chrono::steady_clock::now() - last_stats_flush_ >= kStatsFlushEvery;
  }

  // Writes the pending sums and this transaction's (the pending ones stay in memory until the
  // commit succeeds: a rolled-back transaction is replayed). Upserts add, so two passes over
  // the same (bucket, type) sum in the file.
  void write_stats(WriteContext& w, const window_stats::SumsByBucket& fresh) {
    record_stats(w, pending_stats_);
    record_stats(w, fresh);
  }

  // Writes the flushed sums to the windowed figures: one upsert per (bucket, type), not per
  // job. Old buckets are pruned every few minutes.
  void record_stats(WriteContext& w, const window_stats::SumsByBucket& sums) {
    Statement& add = w.statements.get(sql::kAddStats);
    Statement& hist = w.statements.get(sql::kAddRunHist);
    int64_t newest = 0;
    for (auto& [key, x] : sums) {
      if (x.empty()) continue;
      newest = std::max(newest, key.first);
      ScopedReset r(add);
      add.bind(1, key.first).bind(2, key.second).bind(3, x.created).bind(4, x.completed);
      add.bind(5, x.failed).bind(6, x.cancelled).bind(7, x.timeout).bind(8, x.retried);
      add.bind(9, x.runs).bind(10, x.run_ms).run();
      for (auto& [bin, n] : x.bins) {
        ScopedReset rh(hist);
        hist.bind(1, key.first).bind(2, key.second).bind(3, bin).bind(4, n).run();
      }
    }
    if (newest - last_stats_prune_ >= window_stats::kPruneEvery) {
      prune_stats(w, newest - window_stats::kKeepBuckets);
      last_stats_prune_ = newest;
    }
  }

  // Deletes statistics buckets before `first_kept`.
  static void prune_stats(WriteContext& w, int64_t first_kept) {
    for (const char* text : {sql::kPruneStats, sql::kPruneRunHist}) {
      Statement& prune = w.statements.get(text);
      ScopedReset r(prune);
      prune.bind(1, first_kept).run();
    }
  }

  void report_failure(WriteOp& op, std::exception_ptr error) {
    if (op.failed) {
      op.failed(error);
      return;
    }
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: a background write to '%s' failed: %s\n", path_.c_str(),
                   e.what());
    }
  }

  std::string path_;
  SqliteOptions options_;
  Database writer_db_;
  StatementCache writer_statements_;
  ReaderPool readers_;

  std::mutex writer_role_;  // held by the thread running a batch on the writer connection
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<WriteOp> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  bool closed_ = false, writer_exited_ = false;
  std::unordered_map<int64_t, StartInfo> pending_starts_;  // guarded by mutex_
  std::deque<WriteOp> stalled_;  // background writes the disk refused; writer role only
  // Guarded by mutex_: the stalled writes' count, their next retry, and the failing state.
  size_t stalled_count_ = 0;
  bool retry_now_ = false;
  std::chrono::steady_clock::time_point retry_at_{};
  std::chrono::milliseconds stall_delay_{kStallFirstDelay};
  int64_t failing_since_ms_ = 0;  // Unix ms of the first failure, 0 while writes succeed
  std::string failing_error_;
  std::atomic<bool> failing_{false};
  size_t starts_in_flight_ = 0;                            // guarded by mutex_
  std::unordered_set<int64_t> held_;  // jobs claimed in memory; writer thread only
  std::unordered_set<int64_t> starts_written_;  // held jobs whose start is written; writer only
  int64_t last_stats_prune_ = 0;                // writer only
  window_stats::SumsByBucket pending_stats_;      // not yet written; writer role only
  std::chrono::steady_clock::time_point last_stats_flush_{};  // writer role only
  bool flush_stats_now_ = false;                  // writer role only
  std::atomic<bool> stats_pending_{false};
  CommitListener listener_;
  std::function<void(const std::vector<int64_t>&)> start_rejected_listener_;
  std::thread writer_;

  // ---- checkpoints -------------------------------------------------------------------------
  // A background PASSIVE checkpoint copies the WAL into the database while commits go on, but
  // it can never finish on its own while they do (frames keep arriving), and SQLite starts the
  // WAL over only once every frame is copied. So the WAL at kCheckpointPages wakes the
  // checkpointer, and at kCatchUpPages the committing thread itself copies what is left (little:
  // the checkpointer did the bulk) with no write in between, which lets the next commit start the
  // WAL over. The WAL thus stays under ~kCatchUpPages pages (16 MB), and a commit pays for a
  // checkpoint four times less often than with SQLite's own (1 in ~500 single enqueues instead
  // of 1 in ~125), and then only for the remainder.
  static constexpr int kCheckpointPages = 1000;  // SQLite's own default threshold
  static constexpr int kCatchUpPages = 4000;

  // After every commit of the writer connection, on the committing thread (which holds the
  // writer role; the write lock itself is already released).
  static int on_wal_commit(void* self, sqlite3* db, const char* name, int pages) {
    if (pages < kCheckpointPages) return SQLITE_OK;
    auto* store = static_cast<SqliteStore*>(self);
    if (pages >= kCatchUpPages) {
      int log = 0, done = 0;
      sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
      return SQLITE_OK;  // a failure (another process busy) is tried again at the next commit
    }
    std::lock_guard lock(store->checkpoint_mutex_);
    if (store->checkpoint_stop_) return SQLITE_OK;
    store->checkpoint_wanted_ = true;
    if (!store->checkpointer_.joinable())
      store->checkpointer_ = std::thread([store] { store->checkpoint_loop(); });
    store->checkpoint_cv_.notify_one();
    return SQLITE_OK;
  }

  void checkpoint_loop() {
    std::unique_ptr<Database> db;
    for (;;) {
      {
        std::unique_lock lock(checkpoint_mutex_);
        checkpoint_cv_.wait(lock, [&] { return checkpoint_wanted_ || checkpoint_stop_; });
        if (checkpoint_stop_) return;
        checkpoint_wanted_ = false;
      }
      try {
        sqlite::ForkShield shield;
        if (!db) {
          db = std::make_unique<Database>(path_, SQLITE_OPEN_READWRITE, options_.busy_timeout_ms);
          configure(*db);  // the same synchronous setting: a checkpoint syncs the file
        }
        int log = 0, done = 0;
        const int rc = sqlite3_wal_checkpoint_v2(db->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                                 &log, &done);
        if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
          std::fprintf(stderr, "jobforge: checkpoint of '%s' failed: %s\n", path_.c_str(),
                       sqlite3_errmsg(db->handle()));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "jobforge: checkpoint of '%s' failed: %s\n", path_.c_str(), e.what());
        db.reset();
      }
    }
  }

  std::mutex checkpoint_mutex_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_wanted_ = false, checkpoint_stop_ = false;
  std::thread checkpointer_;  // guarded by checkpoint_mutex_ until joined
};

}  // namespace

void Store::unsupported(const char* what) {
  throw StoreError(SQLITE_MISUSE, std::string(what) + " are not supported by this store");
}

std::unique_ptr<Store> open_sqlite_store(const std::string& path, const SqliteOptions& options) {
  // Processes opening a new file at once contend for its first write (the switch to WAL and the
  // migrations), and SQLite answers some of those contentions with SQLITE_BUSY at once rather
  // than through the busy handler: try again until the busy timeout has passed.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(std::max(options.busy_timeout_ms, 1000));
  for (int delay_ms = 1;; delay_ms = std::min(delay_ms * 2, 50)) {
    try {
      return std::make_unique<SqliteStore>(path, options);
    } catch (const StoreError& e) {
      const bool busy = (e.code() & 0xff) == SQLITE_BUSY;
      if (!busy || std::chrono::steady_clock::now() >= deadline) {
        const std::string what = e.what();
        if (what.find(path) != std::string::npos) throw;
        throw StoreError(e.code(), "cannot open database '" + path + "': " + what);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  }
}

}  // namespace jobforge
