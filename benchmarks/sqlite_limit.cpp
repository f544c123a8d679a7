// The raw-SQLite limit: the same durable work as the engine, with the sqlite3 C API and nothing
// else (no threads, no queue, no engine). Same schema, indexes and triggers as the engine (its
// connection pragmas and migrations are included from cpp/src/store/sqlite_sql.hpp, so the two stay
// in sync), WAL, synchronous=NORMAL, prepared statements, time-ordered (UUID v7-style) ids, and
// the same counters: one upsert of job_type_counts per (type, status) a transaction changed.
// The statements below are the engine's insert, claim and finish as of the first engine commit,
// kept here (not included) so the limit does not move when the engine's statements change.
//
//   sqlite_limit PATH insert-single N              one insert per transaction
//   sqlite_limit PATH insert-batch  N [BATCH]      BATCH inserts per transaction (default 10000)
//   sqlite_limit PATH lifecycle     N [BATCH]      two writes per job: each transaction claims the
//                                                  next BATCH queued jobs (UPDATE … WHERE rowid IN
//                                                  (SELECT … ORDER BY priority, run_at LIMIT n)
//                                                  RETURNING …) and finishes the BATCH claimed by
//                                                  the previous one, so every claim is durable
//                                                  before its job "runs" (default BATCH 64)
//   sqlite_limit PATH lifecycle-one N [BATCH]      one write per job: each transaction picks the
//                                                  next BATCH queued jobs in claim order and writes
//                                                  only their final state (default BATCH 512)
//   --type=NAME (anywhere)                         the jobs' type (default "noop")
//   --bulk (insert-batch only)                     to prepare a file, not to measure: no
//                                                  journal, no syncs, a 256 MB cache while
//                                                  filling; WAL again at the end
//
// A new PATH is created with the engine's migrations (an existing one is migrated like the engine
// does). The lifecycle modes drain N of the queued jobs of the type that PATH already holds (a
// copy of a prepared file, say; all of them if fewer) or, if it holds none, insert N first (that
// part untimed).
// Inserted payloads are {"i": n}. Output: one JSON line
// {"mode":…, "n":…, "batch":…, "seconds":…, "rate":…, "sqlite":…}; exit 3 if a check fails
// (a job not completed exactly once, a counter that disagrees with the rows).
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "store/sqlite_sql.hpp"

namespace sql = jobforge::sqlite::sql;

namespace {

constexpr const char* kInsert = R"sql(
INSERT INTO jobs (id, type, status, priority, payload, max_attempts, parent_job_id,
                  user_initiated, timeout_seconds, timeout_ms, retry_delay_ms, created_at,
                  queued_at, run_at, updated_at)
VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, (?8 + 999) / 1000, ?8, ?9, ?10, ?10, ?11, ?10)
)sql";

// The claim: the inner SELECT walks the partial index idx_jobs_claim in priority order.
constexpr const char* kClaim = R"sql(
UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?1, updated_at = ?1,
       lease_owner = ?2, lease_expires_at = ?3, cancel_requested = 0,
       timeout_at = ?1 + COALESCE(timeout_ms, timeout_seconds * 1000, 300000)
WHERE rowid IN (SELECT rowid FROM jobs INDEXED BY idx_jobs_claim
                WHERE status = 'queued' AND run_at <= ?1 AND +type IN (?5)
                ORDER BY priority, run_at LIMIT ?4)
RETURNING rowid, id, type, status, priority, payload, progress, progress_current, progress_total,
          progress_message, result, error, error_detail, attempts, max_attempts, timeout_ms,
          timeout_seconds, retry_delay_ms, parent_job_id, user_initiated, cancel_requested,
          created_at, queued_at, started_at, completed_at, run_at, timeout_at, lease_owner,
          lease_expires_at
)sql";

// The end of an attempt, only for the lease holder.
constexpr const char* kFinish = R"sql(
UPDATE jobs SET status = ?1, result = ?2, error = ?3, error_detail = ?4, progress = ?5,
       progress_current = ?6, progress_total = ?7, progress_message = ?8, completed_at = ?9,
       run_at = COALESCE(?10, run_at), queued_at = COALESCE(?11, queued_at),
       attempts = attempts - ?12, updated_at = ?13, lease_owner = NULL, lease_expires_at = NULL,
       cancel_requested = 0
WHERE rowid = ?14 AND status = 'running' AND lease_owner = ?15
)sql";

[[noreturn]] void die(sqlite3* db, const char* what) {
  std::fprintf(stderr, "sqlite_limit: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
  std::exit(2);
}

void exec(sqlite3* db, const char* text) {
  char* err = nullptr;
  if (sqlite3_exec(db, text, nullptr, nullptr, &err) != SQLITE_OK) {
    std::fprintf(stderr, "sqlite_limit: %s\n  in: %.200s\n", err ? err : "?", text);
    std::exit(2);
  }
}

sqlite3_stmt* prepare(sqlite3* db, const std::string& text) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db, text.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK)
    die(db, ("prepare " + text.substr(0, 80)).c_str());
  return s;
}

void run(sqlite3* db, sqlite3_stmt* s) {
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) die(db, "step");
  sqlite3_reset(s);
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// Like jobforge::new_job_id: 48 bits of Unix ms, version 7, a 12-bit sequence, random tail.
std::string new_id() {
  static std::mt19937_64 rng{std::random_device{}()};
  static uint64_t sequence = 0;
  const uint64_t ms = static_cast<uint64_t>(now_ms());
  const uint64_t hi = (ms << 16) | (0x7ull << 12) | (sequence++ & 0xfff);
  const uint64_t lo = (rng() & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  static constexpr char hex[] = "0123456789abcdef";
  std::string s(36, '-');
  int pos = 0;
  auto put = [&](uint64_t v) {
    for (int i = 15; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23) ++pos;
      s[pos++] = hex[(v >> (i * 4)) & 0xf];
    }
  };
  put(hi);
  put(lo);
  return s;
}

struct Db {
  sqlite3* db = nullptr;
  sqlite3_stmt* insert = nullptr;

  explicit Db(const char* path) {
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK)
      die(db, "open");
    sqlite3_busy_timeout(db, 5000);
    exec(db, sql::kConnectionPragmas);
    exec(db, "PRAGMA synchronous = NORMAL");
    // The engine's migrations, in order, under user_version, as SqliteStore::migrate does.
    sqlite3_stmt* v = prepare(db, "PRAGMA user_version");
    if (sqlite3_step(v) != SQLITE_ROW) die(db, "user_version");
    const int version = sqlite3_column_int(v, 0);
    sqlite3_finalize(v);
    for (int m = version + 1; m <= sql::kSchemaVersion; ++m) {
      exec(db, "BEGIN IMMEDIATE");
      exec(db, sql::kMigrations[m - 1]);
      exec(db, ("PRAGMA user_version = " + std::to_string(m)).c_str());
      exec(db, "COMMIT");
    }
    insert = prepare(db, kInsert);
    add_count_stmt = prepare(db, sql::kAddCount);
  }
  ~Db() {
    sqlite3_finalize(insert);
    sqlite3_finalize(add_count_stmt);
    sqlite3_close_v2(db);
  }

  std::string type = "noop";
  sqlite3_stmt* add_count_stmt = nullptr;

  // The counters, as the store keeps them: one upsert per (type, status) and transaction.
  void add_count(const char* status, int64_t n) {
    if (n == 0) return;
    sqlite3_stmt* s = add_count_stmt;
    sqlite3_bind_text(s, 1, type.data(), static_cast<int>(type.size()), SQLITE_STATIC);
    sqlite3_bind_text(s, 2, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, n);
    run(db, s);
  }

  void insert_job(int64_t i, int64_t now) {
    const std::string id = new_id();
    const std::string payload = "{\"i\": " + std::to_string(i) + "}";
    sqlite3_stmt* s = insert;
    sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, type.data(), static_cast<int>(type.size()), SQLITE_STATIC);
    sqlite3_bind_int(s, 3, 5);
    sqlite3_bind_text(s, 4, payload.data(), static_cast<int>(payload.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 5, 3);
    sqlite3_bind_null(s, 6);
    sqlite3_bind_int(s, 7, 1);
    sqlite3_bind_int64(s, 8, 300000);
    sqlite3_bind_int64(s, 9, 1000);
    sqlite3_bind_int64(s, 10, now);
    sqlite3_bind_int64(s, 11, now);
    run(db, s);
  }

  void insert_batched(int64_t n, int64_t batch) {
    for (int64_t i = 0; i < n;) {
      exec(db, "BEGIN IMMEDIATE");
      const int64_t now = now_ms();
      int64_t k = 0;
      for (; k < batch && i < n; ++k, ++i) insert_job(i, now);
      add_count("queued", k);
      exec(db, "COMMIT");
    }
  }

  int64_t count_queued() {
    sqlite3_stmt* s =
        prepare(db, "SELECT count(*) FROM jobs WHERE status = 'queued' AND type = ?1");
    sqlite3_bind_text(s, 1, type.data(), static_cast<int>(type.size()), SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) die(db, "count");
    const int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
  }

  // (type, status) pairs whose counter differs from a count of the rows.
  int64_t counts_drift() {
    sqlite3_stmt* s = prepare(db, R"sql(
SELECT count(*) FROM (SELECT type, status, count(*) AS n FROM jobs GROUP BY 1, 2) j
FULL JOIN (SELECT type, status, n FROM job_type_counts WHERE n <> 0) c USING (type, status)
WHERE j.n IS NOT c.n)sql");
    if (sqlite3_step(s) != SQLITE_ROW) die(db, "counts");
    const int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
  }

  int64_t count_completed() {
    sqlite3_stmt* s =
        prepare(db, "SELECT count(*), sum(attempts <> 1) FROM jobs WHERE status = 'completed'");
    if (sqlite3_step(s) != SQLITE_ROW) die(db, "count");
    const int64_t n = sqlite3_column_int64(s, 0);
    const int64_t bad = sqlite3_column_int64(s, 1);
    sqlite3_finalize(s);
    if (bad != 0) {
      std::fprintf(stderr, "sqlite_limit: %lld completed jobs with attempts != 1\n",
                   static_cast<long long>(bad));
      std::exit(3);
    }
    return n;
  }
};

// Two writes per job. Transaction k claims batch k and completes batch k-1 (claimed and durable
// in transaction k-1): the pipelined shape of an engine whose claims are durable before a job
// runs and whose finishes are group-committed with the next claim.
void lifecycle(Db& d, int64_t n, int batch) {
  sqlite3_stmt* claim = prepare(d.db, kClaim);
  sqlite3_stmt* finish = prepare(d.db, kFinish);
  const char* owner = "bench:1:limit";
  const int64_t lease_ms = 30000;
  std::vector<int64_t> previous, current;
  int64_t done = 0, claimed = 0;
  for (;;) {
    exec(d.db, "BEGIN IMMEDIATE");
    const int64_t now = now_ms();
    current.clear();
    sqlite3_bind_int64(claim, 1, now);
    sqlite3_bind_text(claim, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(claim, 3, now + lease_ms);
    sqlite3_bind_int64(claim, 4, std::min<int64_t>(batch, n - claimed));
    sqlite3_bind_text(claim, 5, d.type.data(), static_cast<int>(d.type.size()), SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(claim)) == SQLITE_ROW)
      current.push_back(sqlite3_column_int64(claim, 0));
    if (rc != SQLITE_DONE) die(d.db, "claim");
    sqlite3_reset(claim);
    claimed += static_cast<int64_t>(current.size());
    for (int64_t rowid : previous) {
      sqlite3_stmt* s = finish;
      sqlite3_bind_text(s, 1, "completed", -1, SQLITE_STATIC);
      sqlite3_bind_text(s, 2, "null", 4, SQLITE_STATIC);
      sqlite3_bind_null(s, 3);
      sqlite3_bind_null(s, 4);
      sqlite3_bind_int(s, 5, 100);
      sqlite3_bind_double(s, 6, 0);
      sqlite3_bind_double(s, 7, 0);
      sqlite3_bind_text(s, 8, "", 0, SQLITE_STATIC);
      sqlite3_bind_int64(s, 9, now);
      sqlite3_bind_null(s, 10);
      sqlite3_bind_null(s, 11);
      sqlite3_bind_int(s, 12, 0);
      sqlite3_bind_int64(s, 13, now);
      sqlite3_bind_int64(s, 14, rowid);
      sqlite3_bind_text(s, 15, owner, -1, SQLITE_STATIC);
      run(d.db, s);
      if (sqlite3_changes(d.db) != 1) die(d.db, "finish matched no row");
      ++done;
    }
    const auto claimed_now = static_cast<int64_t>(current.size());
    const auto finished_now = static_cast<int64_t>(previous.size());
    d.add_count("queued", -claimed_now);
    d.add_count("running", claimed_now - finished_now);
    d.add_count("completed", finished_now);
    exec(d.db, "COMMIT");
    if (current.empty()) break;
    previous.swap(current);
  }
  sqlite3_finalize(claim);
  sqlite3_finalize(finish);
  if (done != n) {
    std::fprintf(stderr, "sqlite_limit: finished %lld of %lld\n", static_cast<long long>(done),
                 static_cast<long long>(n));
    std::exit(3);
  }
}

// One write per job: the job "ran" inside the commit window, so only its final state is written
// (the running state is coalesced away). Jobs are picked in claim order through the same index.
void lifecycle_one(Db& d, int64_t n, int batch) {
  sqlite3_stmt* pick = prepare(
      d.db,
      "SELECT rowid FROM jobs INDEXED BY idx_jobs_claim WHERE status = 'queued' AND run_at <= ?1 "
      "AND +type IN (?2) ORDER BY priority, run_at LIMIT ?3");
  sqlite3_stmt* finish = prepare(d.db, R"sql(
UPDATE jobs SET status = 'completed', result = ?1, progress = 100, attempts = attempts + 1,
       started_at = ?2, completed_at = ?2, updated_at = ?2
WHERE rowid = ?3 AND status = 'queued'
)sql");
  std::vector<int64_t> rowids;
  int64_t done = 0;
  for (;;) {
    exec(d.db, "BEGIN IMMEDIATE");
    const int64_t now = now_ms();
    rowids.clear();
    sqlite3_bind_int64(pick, 1, now);
    sqlite3_bind_text(pick, 2, d.type.data(), static_cast<int>(d.type.size()), SQLITE_STATIC);
    sqlite3_bind_int64(pick, 3, std::min<int64_t>(batch, n - done));
    int rc;
    while ((rc = sqlite3_step(pick)) == SQLITE_ROW) rowids.push_back(sqlite3_column_int64(pick, 0));
    if (rc != SQLITE_DONE) die(d.db, "pick");
    sqlite3_reset(pick);
    for (int64_t rowid : rowids) {
      sqlite3_bind_text(finish, 1, "null", 4, SQLITE_STATIC);
      sqlite3_bind_int64(finish, 2, now);
      sqlite3_bind_int64(finish, 3, rowid);
      run(d.db, finish);
      if (sqlite3_changes(d.db) != 1) die(d.db, "finish matched no row");
      ++done;
    }
    d.add_count("queued", -static_cast<int64_t>(rowids.size()));
    d.add_count("completed", static_cast<int64_t>(rowids.size()));
    exec(d.db, "COMMIT");
    if (rowids.empty()) break;
  }
  sqlite3_finalize(pick);
  sqlite3_finalize(finish);
  if (done != n) {
    std::fprintf(stderr, "sqlite_limit: finished %lld of %lld\n", static_cast<long long>(done),
                 static_cast<long long>(n));
    std::exit(3);
  }
}

int usage() {
  std::fprintf(stderr,
               "usage: sqlite_limit PATH insert-single N | insert-batch N [BATCH] | "
               "lifecycle N [BATCH] | lifecycle-one N [BATCH]   [--type=NAME]\n");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args;
  std::string type = "noop";
  bool bulk = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--type=", 7) == 0)
      type = argv[i] + 7;
    else if (std::strcmp(argv[i], "--bulk") == 0)
      bulk = true;
    else
      args.emplace_back(argv[i]);
  }
  if (args.size() < 3 || type.empty()) return usage();
  const std::string path = args[0];
  const std::string mode = args[1];
  int64_t n = std::atoll(args[2].c_str());
  if (n <= 0) return usage();
  int64_t batch = args.size() > 3 ? std::atoll(args[3].c_str()) : 0;

  Db d(path.c_str());
  d.type = type;
  using Clock = std::chrono::steady_clock;
  Clock::time_point t0, t1;
  if (mode == "insert-single") {
    batch = 1;
    t0 = Clock::now();
    d.insert_batched(n, 1);
    t1 = Clock::now();
  } else if (mode == "insert-batch") {
    if (batch <= 0) batch = 10000;
    if (bulk) {  // preparing a file, not measuring: no journal, no syncs, a big cache
      exec(d.db,
           "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144");
    }
    t0 = Clock::now();
    d.insert_batched(n, batch);
    t1 = Clock::now();
    if (bulk) exec(d.db, "PRAGMA journal_mode = WAL");
  } else if (mode == "lifecycle" || mode == "lifecycle-one") {
    if (batch <= 0) batch = mode == "lifecycle" ? 64 : 512;
    if (const int64_t queued = d.count_queued(); queued > 0)
      n = std::min(n, queued);
    else
      d.insert_batched(n, 10000);
    exec(d.db, "PRAGMA wal_checkpoint(TRUNCATE)");
    const int64_t completed_before = d.count_completed();
    t0 = Clock::now();
    if (mode == "lifecycle")
      lifecycle(d, n, static_cast<int>(batch));
    else
      lifecycle_one(d, n, static_cast<int>(batch));
    t1 = Clock::now();
    if (d.count_completed() - completed_before != n) {
      std::fprintf(stderr, "sqlite_limit: not every job completed\n");
      return 3;
    }
    if (d.counts_drift() != 0) {
      std::fprintf(stderr, "sqlite_limit: job_type_counts disagree with the rows\n");
      return 3;
    }
  } else {
    return usage();
  }
  const double seconds = std::chrono::duration<double>(t1 - t0).count();
  std::printf(
      "{\"mode\": \"%s\", \"n\": %lld, \"batch\": %lld, \"seconds\": %.6f, \"rate\": %.1f, "
      "\"sqlite\": \"%s\"}\n",
      mode.c_str(), static_cast<long long>(n), static_cast<long long>(batch), seconds,
      static_cast<double>(n) / seconds, sqlite3_libversion());
  return 0;
}
