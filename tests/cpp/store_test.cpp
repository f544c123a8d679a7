// SqliteStore, opened directly: schema and migrations, inserts, claims, leases, cancel, retry,
// counters, recovery of dead owners, the commit listener, and errors. Real files, real threads.
#include "jobforge/store.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "jobforge/errors.hpp"
#include "test_support.hpp"

using namespace jobforge;
using jobforge::testing::Backend;
using jobforge::testing::RawDb;
using jobforge::testing::TempDir;
using jobforge::testing::TestDb;

namespace {

// The seed schema of DESIGN.md ("a database created with exactly that schema must open and be
// migrated in place"), kept here verbatim rather than borrowed from the store's migration 1.
constexpr const char* kSeedSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'created',
  priority INTEGER NOT NULL DEFAULT 5,
  payload TEXT NOT NULL,
  progress INTEGER DEFAULT 0,
  result TEXT,
  error TEXT,
  attempts INTEGER DEFAULT 0,
  max_attempts INTEGER DEFAULT 3,
  parent_job_id TEXT,
  user_initiated INTEGER DEFAULT 1,
  timeout_seconds INTEGER DEFAULT 300,
  created_at INTEGER NOT NULL,
  queued_at INTEGER,
  started_at INTEGER,
  completed_at INTEGER,
  timeout_at INTEGER,
  FOREIGN KEY (parent_job_id) REFERENCES jobs(id)
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS idx_jobs_type ON jobs(type);
CREATE INDEX IF NOT EXISTS idx_jobs_priority ON jobs(priority);
CREATE INDEX IF NOT EXISTS idx_jobs_user_initiated ON jobs(user_initiated);
CREATE INDEX IF NOT EXISTS idx_jobs_parent_id ON jobs(parent_job_id);
CREATE INDEX IF NOT EXISTS idx_jobs_created_at ON jobs(created_at);
)sql";

constexpr int64_t kT0 = 1'700'000'000'000;  // a fixed "now" for store calls that take one

NewJob make_job(const std::string& type = "work", int priority = priority::normal,
                int64_t run_at = kT0, int max_attempts = 3) {
  NewJob j;
  j.id = new_job_id();
  j.type = type;
  j.priority = priority;
  j.payload_json = R"({"n":1})";
  j.max_attempts = max_attempts;
  j.timeout_ms = 60'000;
  j.retry_delay_ms = 10;
  j.created_at = kT0;
  j.run_at = run_at;
  j.user_initiated = true;
  return j;
}

ClaimRequest claim_request(const std::string& owner, int limit = 1, int64_t now = kT0,
                           std::vector<std::string> types = {"work"}) {
  ClaimRequest r;
  r.owner = owner;
  r.limit = limit;
  r.now = now;
  r.lease_ms = 60'000;
  r.types = std::move(types);
  return r;
}

Outcome outcome_for(const Job& job, const std::string& owner, Status to) {
  Outcome o;
  o.rowid = job.rowid;
  o.job_id = job.id;
  o.job_type = job.type;
  o.owner = owner;
  o.to = to;
  o.attempt = job.attempts;
  o.at = kT0 + 1;
  o.queued_at = job.queued_at;
  if (to == Status::completed) {
    o.result_json = R"({"ok":true})";
    o.progress = 100;
  }
  if (to == Status::failed) o.error = "it broke";
  if (to == Status::queued) o.run_at = kT0 + 5;
  return o;
}

WorkerInfo worker(const std::string& id, int64_t heartbeat_at) {
  WorkerInfo w;
  w.id = id;
  w.hostname = "test-host";
  w.pid = 0;
  w.version = "test";
  w.started_at = heartbeat_at;
  w.heartbeat_at = heartbeat_at;
  w.state = "running";
  return w;
}

// One behaviour suite, two stores: every TEST_P runs on a SQLite file and on a fresh PostgreSQL
// schema. TEST_F(SqliteStoreTest, ...) covers what only SQLite has (files, PRAGMAs, claims in
// memory, the seed schema).
class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  virtual Backend backend() const { return GetParam(); }
  std::unique_ptr<Store> open(const SqliteOptions& options = {}) {
    if (db().postgres()) return open_postgres_store(db().path());
    return open_sqlite_store(path(), options);
  }
  std::string path() const { return db().path(); }
  TestDb& db() const {
    if (!db_) db_ = std::make_unique<TestDb>(backend());
    return *db_;
  }

  // The schema version this jobforge gives a new file, for comparing migrated files with.
  int64_t fresh_schema_version() {
    const std::string fresh = dir().file("fresh.db");
    { auto store = open_sqlite_store(fresh); }
    RawDb raw(fresh);
    return raw.integer("PRAGMA user_version");
  }

  Status status_of(Store& store, const std::string& id) {
    auto job = store.get(id);
    EXPECT_TRUE(job.has_value()) << id;
    return job ? job->status : Status::created;
  }

  const TempDir& dir() const { return db().dir(); }

 private:
  mutable std::unique_ptr<TestDb> db_;
};

class SqliteStoreTest : public StoreTest {
 protected:
  Backend backend() const override { return Backend::sqlite; }
};

// JSON texts equal as values (PostgreSQL's JSONB re-spaces what it stores).
bool same_json(const std::optional<std::string>& a, const std::optional<std::string>& b) {
  if (!a || !b) return a.has_value() == b.has_value();
  return nlohmann::json::parse(*a) == nlohmann::json::parse(*b);
}

}  // namespace

// ---- schema and migrations ----------------------------------------------------------------

TEST_F(SqliteStoreTest, NewFileGetsTheFullSchemaInWalMode) {
  { auto store = open(); }
  RawDb raw(path());
  EXPECT_GE(raw.integer("PRAGMA user_version"), 2);  // seed schema + engine columns, at least
  EXPECT_EQ(raw.text("PRAGMA journal_mode"), "wal");
  for (const char* table : {"jobs", "job_type_counts", "workers", "job_logs", "job_stats"})
    EXPECT_EQ(raw.integer(std::string("SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                                      "name='") +
                          table + "'"),
              1)
        << table;
  EXPECT_EQ(raw.integer("SELECT count(*) FROM sqlite_master WHERE name='idx_jobs_claim'"), 1);
  EXPECT_EQ(raw.integer("SELECT count(*) FROM job_type_counts"), 0);
}

TEST_F(SqliteStoreTest, ReopeningAMigratedFileKeepsItsRows) {
  const auto job = make_job();
  {
    auto store = open();
    store->insert({job});
  }
  auto store = open();
  ASSERT_TRUE(store->get(job.id).has_value());
  EXPECT_EQ(store->stats().total, 1);
  RawDb raw(path());
  EXPECT_EQ(raw.integer("PRAGMA user_version"), fresh_schema_version());
}

TEST_F(SqliteStoreTest, SeedSchemaFileIsMigratedInPlaceKeepingRowsAndCounts) {
  {
    RawDb raw(path());
    raw.exec(kSeedSchema);
    // Rows as the seed systems wrote them: v4 ids, seconds for timeouts, no engine columns.
    raw.exec(R"sql(
      INSERT INTO jobs (id, type, status, priority, payload, attempts, max_attempts,
                        timeout_seconds, created_at, queued_at)
      VALUES ('6f1c2a0e-8d3b-4c55-9a61-0b7e2f4d9c11', 'work', 'queued', 3, '{"a":1}', 0, 3, 20,
              1000, 1500);
      INSERT INTO jobs (id, type, status, priority, payload, attempts, max_attempts,
                        timeout_seconds, created_at, queued_at, started_at, completed_at, result)
      VALUES ('0a4d1e5b-3c2f-4b7a-8e90-1d2c3b4a5f60', 'work', 'completed', 5, '{}', 1, 3, 300,
              900, 900, 950, 990, '{"done":true}');
      INSERT INTO jobs (id, type, status, priority, payload, attempts, max_attempts, error,
                        created_at)
      VALUES ('9b8a7c6d-5e4f-4a3b-b2c1-d0e9f8a7b6c5', 'other', 'failed', 7, 'null', 3, 3,
              'boom', 800);
    )sql");
    ASSERT_EQ(raw.integer("PRAGMA user_version"), 0);
    ASSERT_EQ(raw.integer("SELECT count(*) FROM sqlite_master WHERE type='index' AND "
                          "name LIKE 'idx_jobs_%'"),
              6);
  }

  auto store = open();
  RawDb raw(path());
  EXPECT_EQ(raw.integer("PRAGMA user_version"), fresh_schema_version());
  EXPECT_EQ(raw.integer("SELECT count(*) FROM jobs"), 3);

  const Stats stats = store->stats();
  EXPECT_EQ(stats.total, 3);
  EXPECT_EQ(stats.count(Status::queued), 1);
  EXPECT_EQ(stats.count(Status::completed), 1);
  EXPECT_EQ(stats.count(Status::failed), 1);
  EXPECT_EQ(stats.count(Status::running), 0);

  auto queued = store->get("6f1c2a0e-8d3b-4c55-9a61-0b7e2f4d9c11");
  ASSERT_TRUE(queued.has_value());
  EXPECT_EQ(queued->status, Status::queued);
  EXPECT_EQ(queued->priority, 3);
  EXPECT_EQ(queued->payload_json, R"({"a":1})");
  EXPECT_EQ(queued->timeout_ms, 20'000);  // seconds carried over into milliseconds
  EXPECT_EQ(queued->run_at, 1500);        // due from when it was queued

  auto completed = store->get("0a4d1e5b-3c2f-4b7a-8e90-1d2c3b4a5f60");
  ASSERT_TRUE(completed.has_value());
  EXPECT_EQ(completed->status, Status::completed);
  EXPECT_EQ(completed->result_json, std::optional<std::string>(R"({"done":true})"));

  auto failed = store->get("9b8a7c6d-5e4f-4a3b-b2c1-d0e9f8a7b6c5");
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->error, std::optional<std::string>("boom"));
  EXPECT_EQ(failed->attempts, 3);

  // The migrated queued job is claimable like any other.
  auto claimed = store->claim(claim_request("owner-a", 10, kT0));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].id, "6f1c2a0e-8d3b-4c55-9a61-0b7e2f4d9c11");
  EXPECT_EQ(claimed[0].attempts, 1);

  // New rows live alongside the old ones, and the counters keep up.
  store->insert({make_job()});
  EXPECT_EQ(store->stats().total, 4);
  EXPECT_EQ(store->stats().count(Status::running), 1);
}

TEST_F(SqliteStoreTest, SeedSchemaFileWithNoRowsIsMigrated) {
  {
    RawDb raw(path());
    raw.exec(kSeedSchema);
  }
  auto store = open();
  EXPECT_EQ(store->stats().total, 0);
  const auto job = make_job();
  store->insert({job});
  EXPECT_EQ(status_of(*store, job.id), Status::queued);
}

TEST_F(SqliteStoreTest, FileFromANewerJobforgeIsRefused) {
  {
    RawDb raw(path());
    raw.exec("PRAGMA user_version = 99");
  }
  try {
    open();
    FAIL() << "expected StoreError";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("99"), std::string::npos) << e.what();
  }
}

// ---- errors opening -----------------------------------------------------------------------

TEST_F(SqliteStoreTest, FileOfRandomBytesIsAStoreError) {
  {
    std::ofstream out(path(), std::ios::binary);
    std::mt19937 rng(42);
    for (int i = 0; i < 8192; ++i) out.put(static_cast<char>(rng() & 0xff));
  }
  try {
    open();
    FAIL() << "expected StoreError";
  } catch (const StoreError& e) {
    EXPECT_NE(e.code(), 0);
    EXPECT_NE(std::string(e.what()).find(path()), std::string::npos) << e.what();
  }
}

TEST_F(SqliteStoreTest, MissingFolderIsAStoreErrorNamingThePath) {
  const std::string missing = dir().file("no/such/folder/jobs.db");
  try {
    open_sqlite_store(missing);
    FAIL() << "expected StoreError";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir().path() / "no"));
}

// ---- insert -------------------------------------------------------------------------------

TEST_P(StoreTest, InsertIsDurableAndVisibleToGetAndList) {
  auto store = open();
  auto a = make_job("work", 2);
  a.parent_id = std::nullopt;
  a.user_initiated = false;
  auto b = make_job("other", 9);
  store->insert({a});
  b.parent_id = a.id;
  store->insert({b});

  // Durable on return: another connection sees the rows at once.
  TestDb& raw = db();
  EXPECT_EQ(raw.integer("SELECT count(*) FROM jobs"), 2);
  EXPECT_EQ(raw.text("SELECT status FROM jobs WHERE id = '" + a.id + "'"), "queued");

  auto got = store->get(a.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->id, a.id);
  EXPECT_EQ(got->type, "work");
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->priority, 2);
  EXPECT_TRUE(same_json(got->payload_json, a.payload_json)) << got->payload_json;
  EXPECT_EQ(got->attempts, 0);
  EXPECT_EQ(got->max_attempts, 3);
  EXPECT_EQ(got->timeout_ms, 60'000);
  EXPECT_EQ(got->retry_delay_ms, 10);
  EXPECT_EQ(got->created_at, kT0);
  EXPECT_EQ(got->run_at, kT0);
  EXPECT_FALSE(got->user_initiated);
  EXPECT_FALSE(got->parent_id.has_value());
  EXPECT_GT(got->rowid, 0);

  EXPECT_FALSE(store->get("00000000-0000-7000-8000-000000000000").has_value());

  EXPECT_EQ(store->list(JobQuery{}).size(), 2u);
  JobQuery by_type;
  by_type.type = "other";
  auto others = store->list(by_type);
  ASSERT_EQ(others.size(), 1u);
  EXPECT_EQ(others[0].id, b.id);
  JobQuery by_parent;
  by_parent.parent_id = a.id;
  auto children = store->list(by_parent);
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0].parent_id, std::optional<std::string>(a.id));
  JobQuery limited;
  limited.limit = 1;
  EXPECT_EQ(store->list(limited).size(), 1u);
  JobQuery running;
  running.status = Status::running;
  EXPECT_TRUE(store->list(running).empty());
}

TEST_P(StoreTest, InsertIsDurableAcrossClose) {
  std::vector<NewJob> jobs;
  for (int i = 0; i < 100; ++i) jobs.push_back(make_job());
  {
    auto store = open();
    store->insert(jobs);
    store->close();
  }
  auto store = open();
  EXPECT_EQ(store->stats().total, 100);
  for (const auto& j : jobs) ASSERT_TRUE(store->get(j.id).has_value());
}

TEST_P(StoreTest, UnknownParentIsAValidationErrorAndNothingIsWritten) {
  auto store = open();
  auto good = make_job();
  auto orphan = make_job();
  orphan.parent_id = "00000000-0000-7000-8000-000000000000";
  try {
    store->insert({good, orphan});
    FAIL() << "expected ValidationError";
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.field(), "parent");
    EXPECT_NE(std::string(e.what()).find(*orphan.parent_id), std::string::npos) << e.what();
  }
  store->flush();
  EXPECT_EQ(store->stats().total, 0);
  EXPECT_FALSE(store->get(good.id).has_value());
  TestDb& raw = db();
  EXPECT_EQ(raw.integer("SELECT count(*) FROM jobs"), 0);
}

// Group commit puts concurrent inserts in one transaction; the bad one must fail alone.
TEST_P(StoreTest, OneFailingInsertInAGroupCommitDoesNotLoseTheOthers) {
  SqliteOptions options;
  options.group_commit_window_us = 20'000;  // make the writer gather the threads' inserts
  auto store = open(options);
  constexpr int kGoodThreads = 6;
  std::vector<NewJob> good(kGoodThreads);
  for (auto& j : good) j = make_job();
  auto bad = make_job();
  bad.parent_id = "00000000-0000-7000-8000-00000000dead";

  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int> good_ok{0}, bad_rejected{0}, other_errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i <= kGoodThreads; ++i) {
    threads.emplace_back([&, i] {
      ++ready;
      while (!go.load()) std::this_thread::yield();
      try {
        if (i == kGoodThreads) {
          store->insert({bad});
        } else {
          store->insert({good[i]});
          ++good_ok;
        }
      } catch (const ValidationError&) {
        if (i == kGoodThreads)
          ++bad_rejected;
        else
          ++other_errors;
      } catch (...) {
        ++other_errors;
      }
    });
  }
  while (ready.load() < kGoodThreads + 1) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();

  EXPECT_EQ(good_ok.load(), kGoodThreads);
  EXPECT_EQ(bad_rejected.load(), 1);
  EXPECT_EQ(other_errors.load(), 0);
  EXPECT_EQ(store->stats().total, kGoodThreads);
  for (const auto& j : good) EXPECT_EQ(status_of(*store, j.id), Status::queued);
  EXPECT_FALSE(store->get(bad.id).has_value());
}

TEST_P(StoreTest, DuplicateIdIsRejectedWithoutLosingTheBatchNeighbours) {
  SqliteOptions options;
  options.group_commit_window_us = 20'000;
  auto store = open(options);
  auto original = make_job();
  store->insert({original});
  auto fresh = make_job();
  auto duplicate = make_job();
  duplicate.id = original.id;

  std::exception_ptr dup_error;
  std::thread t1([&] {
    try {
      store->insert({duplicate});
    } catch (...) {
      dup_error = std::current_exception();
    }
  });
  std::thread t2([&] { store->insert({fresh}); });
  t1.join();
  t2.join();
  ASSERT_TRUE(dup_error);
  EXPECT_THROW(std::rethrow_exception(dup_error), Error);
  EXPECT_EQ(store->stats().total, 2);
  EXPECT_TRUE(store->get(fresh.id).has_value());
}

TEST_P(StoreTest, ListReturnsNewestFirstWithOffset) {
  auto store = open();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto j = make_job();
    j.created_at = kT0 + i;
    ids.push_back(j.id);
    store->insert({j});
  }
  JobQuery q;
  q.limit = 2;
  q.offset = 1;
  auto page = store->list(q);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].id, ids[3]);
  EXPECT_EQ(page[1].id, ids[2]);
  JobQuery several;
  several.statuses = {Status::queued, Status::cancelled};
  ASSERT_EQ(store->cancel(ids[0], kT0), CancelResult::cancelled);
  EXPECT_EQ(store->list(several).size(), 5u);
  several.statuses = {Status::cancelled};
  EXPECT_EQ(store->list(several).size(), 1u);
}

// SQLite allows one writer per file: another connection's write lock is waited out, and the
// store retries SQLITE_BUSY with backoff even when the busy timeout is short.
TEST_F(SqliteStoreTest, InsertWaitsOutAnotherConnectionsWriteLock) {
  SqliteOptions options;
  options.busy_timeout_ms = 5;
  auto store = open(options);
  RawDb locker(path());
  locker.exec("BEGIN IMMEDIATE");
  const auto job = make_job();
  std::atomic<bool> inserted{false};
  std::exception_ptr error;
  std::thread producer([&] {
    try {
      store->insert({job});
      inserted = true;
    } catch (...) {
      error = std::current_exception();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_FALSE(inserted.load());  // cannot commit while the lock is held
  locker.exec("COMMIT");
  producer.join();
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "insert failed instead of waiting: " << e.what();
    }
  }
  EXPECT_TRUE(inserted.load());
  EXPECT_EQ(status_of(*store, job.id), Status::queued);
}

// ---- claim --------------------------------------------------------------------------------

TEST_P(StoreTest, ClaimTakesPriorityThenRunAtThenInsertionOrder) {
  auto store = open();
  // (name, priority, run_at), inserted in this order.
  struct Row {
    const char* name;
    int priority;
    int64_t run_at;
  };
  const std::vector<Row> rows = {
      {"p5-late", 5, kT0 - 10},   {"p9", 9, kT0 - 1000},   {"p1-b", 1, kT0 - 50},
      {"p5-early", 5, kT0 - 20},  {"p1-a", 1, kT0 - 50},   {"p1-first", 1, kT0 - 60},
      {"p5-late-2", 5, kT0 - 10}, {"p10", 10, kT0 - 5000},
  };
  std::map<std::string, std::string> name_of;
  for (const auto& r : rows) {
    auto j = make_job("work", r.priority, r.run_at);
    name_of[j.id] = r.name;
    store->insert({j});
  }
  std::vector<std::string> order;
  for (;;) {
    auto claimed = store->claim(claim_request("owner-a", 1));
    if (claimed.empty()) break;
    ASSERT_EQ(claimed.size(), 1u);
    order.push_back(name_of[claimed[0].id]);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"p1-first", "p1-b", "p1-a", "p5-early", "p5-late",
                                             "p5-late-2", "p9", "p10"}));
}

TEST_P(StoreTest, ClaimOfManyReturnsThemInClaimOrder) {
  auto store = open();
  std::vector<std::string> expected(5);
  // Inserted worst first.
  for (int p = 10; p >= 6; --p) {
    auto j = make_job("work", p);
    expected[p - 6] = j.id;
    store->insert({j});
  }
  auto claimed = store->claim(claim_request("owner-a", 3));
  ASSERT_EQ(claimed.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(claimed[i].id, expected[i]);
    EXPECT_EQ(claimed[i].status, Status::running);
    EXPECT_EQ(claimed[i].attempts, 1);
    EXPECT_EQ(claimed[i].lease_owner, "owner-a");
    EXPECT_EQ(claimed[i].lease_expires_at, kT0 + 60'000);
    EXPECT_EQ(claimed[i].started_at, kT0);
  }
  EXPECT_EQ(store->stats().count(Status::running), 3);
  EXPECT_EQ(store->stats().count(Status::queued), 2);
}

TEST_P(StoreTest, DelayedJobIsNotClaimedBeforeItIsDue) {
  auto store = open();
  const auto delayed = make_job("work", priority::urgent, kT0 + 60'000);
  store->insert({delayed});
  EXPECT_TRUE(store->claim(claim_request("owner-a", 10, kT0)).empty());
  EXPECT_TRUE(store->claim(claim_request("owner-a", 10, kT0 + 59'999)).empty());
  EXPECT_EQ(store->next_run_at({"work"}), std::optional<int64_t>(kT0 + 60'000));
  auto claimed = store->claim(claim_request("owner-a", 10, kT0 + 60'000));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].id, delayed.id);
}

TEST_P(StoreTest, DueLowPriorityJobGoesBeforeANotYetDueUrgentOne) {
  auto store = open();
  const auto urgent_later = make_job("work", priority::urgent, kT0 + 1000);
  const auto low_now = make_job("work", priority::low, kT0);
  store->insert({urgent_later, low_now});
  auto claimed = store->claim(claim_request("owner-a", 10, kT0));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].id, low_now.id);
}

TEST_P(StoreTest, ClaimOnlyTakesRequestedTypes) {
  auto store = open();
  const auto a = make_job("alpha", priority::urgent);
  const auto b = make_job("beta", priority::low);
  const auto c = make_job("gamma", priority::normal);
  store->insert({a, b, c});
  auto claimed = store->claim(claim_request("owner-a", 10, kT0, {"beta"}));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].id, b.id);
  claimed = store->claim(claim_request("owner-a", 10, kT0, {"gamma", "alpha"}));
  ASSERT_EQ(claimed.size(), 2u);
  EXPECT_EQ(claimed[0].id, a.id);
  EXPECT_EQ(claimed[1].id, c.id);
  EXPECT_TRUE(store->claim(claim_request("owner-a", 10, kT0, {})).empty());
  EXPECT_FALSE(store->next_run_at({"delta"}).has_value());
}

TEST_P(StoreTest, ConcurrentClaimsNeverHandOutAJobTwice) {
  auto store = open();
  std::vector<NewJob> jobs;
  for (int i = 0; i < 200; ++i) jobs.push_back(make_job());
  store->insert(jobs);
  std::mutex m;
  std::vector<std::string> seen;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (;;) {
        auto claimed = store->claim(claim_request("owner-" + std::to_string(t), 3));
        if (claimed.empty()) return;
        std::lock_guard lock(m);
        for (auto& j : claimed) seen.push_back(j.id);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(seen.size(), 200u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 200u);
  EXPECT_EQ(store->stats().count(Status::running), 200);
}

// ---- claims in memory (a process alone on the file) ----------------------------------------

namespace {

ClaimRequest memory_claim(const std::string& owner, int limit) {
  ClaimRequest r = claim_request(owner, limit);
  r.durable = false;
  return r;
}

StartInfo start_of(const Job& job, const std::string& owner) {
  StartInfo s;
  s.rowid = job.rowid;
  s.job_id = job.id;
  s.job_type = job.type;
  s.owner = owner;
  s.attempt = job.attempts + 1;
  s.started_at = kT0 + 1;
  s.lease_expires_at = kT0 + 60'000;
  s.queued_at = job.queued_at;
  return s;
}

}  // namespace

TEST_F(SqliteStoreTest, ClaimInMemoryLeavesJobsQueuedInTheFileAndNeverHandsOneOutTwice) {
  auto store = open();
  std::vector<NewJob> jobs;
  for (int p = 1; p <= 3; ++p) jobs.push_back(make_job("work", p));
  store->insert(jobs);
  auto first = store->claim(memory_claim("owner-a", 2));
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].id, jobs[0].id);
  EXPECT_EQ(first[1].id, jobs[1].id);
  store->flush();
  EXPECT_EQ(status_of(*store, jobs[0].id), Status::queued);  // nothing written for a claim
  EXPECT_EQ(store->stats().count(Status::queued), 3);
  auto second = store->claim(memory_claim("owner-a", 10));
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].id, jobs[2].id);
  EXPECT_TRUE(store->claim(memory_claim("owner-a", 10)).empty());
}

// Another process cancels and retries a job this one holds in memory: the holder's late end, or
// late start, must not land on the re-queued job (the claim token, queued_at, has changed).
TEST_F(SqliteStoreTest, AStaleInMemoryHolderCannotFinishOrStartAJobRetriedMeanwhile) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(claimed.size(), 1u);
  auto other = open();  // another process on the same file
  ASSERT_EQ(other->cancel(job.id, kT0 + 10), CancelResult::cancelled);
  ASSERT_TRUE(other->retry(job.id, kT0 + 20));
  other->close();

  store->mark_started(start_of(claimed[0], "owner-a"));
  Outcome o = outcome_for(claimed[0], "owner-a", Status::completed);
  o.claimed_in_memory = true;
  o.attempt = 1;
  store->finish(o);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued) << "the retried job must run again, not be finished";
  EXPECT_EQ(got->attempts, 0);
  EXPECT_FALSE(got->result_json.has_value());
}

TEST_F(SqliteStoreTest, ReleasedJobsClaimedInMemoryAreClaimableAgain) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_TRUE(store->claim(memory_claim("owner-a", 1)).empty());
  store->release({claimed[0].rowid});
  auto again = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, job.id);
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->attempts, 0);
}

TEST_F(SqliteStoreTest, MarkStartedWritesTheRunningStateThenFinishWritesTheEnd) {
  auto store = open();
  std::mutex m;
  std::vector<Transition> seen;
  store->set_commit_listener([&](std::vector<Transition>& t) {
    std::lock_guard lock(m);
    seen.insert(seen.end(), t.begin(), t.end());
  });
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(claimed.size(), 1u);
  store->mark_started(start_of(claimed[0], "owner-a"));
  store->flush();
  auto running = store->get(job.id);
  ASSERT_TRUE(running.has_value());
  EXPECT_EQ(running->status, Status::running);
  EXPECT_EQ(running->attempts, 1);
  EXPECT_EQ(running->lease_owner, "owner-a");
  EXPECT_EQ(store->stats().count(Status::running), 1);

  Outcome o = outcome_for(claimed[0], "owner-a", Status::completed);
  o.claimed_in_memory = true;
  o.attempt = 1;
  store->finish(o);
  store->flush();
  auto done = store->get(job.id);
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->status, Status::completed);
  EXPECT_EQ(done->attempts, 1);
  std::lock_guard lock(m);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1].to, Status::running);
  EXPECT_EQ(seen[2].to, Status::completed);
}

TEST_F(SqliteStoreTest, EndOfAJobClaimedInMemoryIsWrittenWithItsAttemptCounted) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(claimed.size(), 1u);
  Outcome o = outcome_for(claimed[0], "owner-a", Status::failed);
  o.claimed_in_memory = true;
  o.attempt = 1;
  o.started_at = kT0 + 1;
  store->finish(o);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::failed);
  EXPECT_EQ(got->attempts, 1);
  EXPECT_EQ(got->started_at, kT0 + 1);
  const Stats s = store->stats();
  EXPECT_EQ(s.count(Status::failed), 1);
  EXPECT_EQ(s.count(Status::queued), 0);
  EXPECT_EQ(s.count(Status::running), 0);
}

TEST_F(SqliteStoreTest, StartOfAJobCancelledMeanwhileIsRejectedAndItStaysCancelled) {
  auto store = open();
  std::mutex m;
  std::vector<int64_t> rejected;
  store->set_start_rejected_listener([&](const std::vector<int64_t>& rowids) {
    std::lock_guard lock(m);
    rejected.insert(rejected.end(), rowids.begin(), rowids.end());
  });
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(memory_claim("owner-a", 1));
  ASSERT_EQ(claimed.size(), 1u);
  // Another process sees the job queued in the file and cancels it.
  {
    auto other = open();
    EXPECT_EQ(other->cancel(job.id, kT0), CancelResult::cancelled);
  }
  store->mark_started(start_of(claimed[0], "owner-a"));
  store->flush();
  EXPECT_EQ(status_of(*store, job.id), Status::cancelled);
  {
    std::lock_guard lock(m);
    EXPECT_EQ(rejected, std::vector<int64_t>{claimed[0].rowid});
  }
  Outcome o = outcome_for(claimed[0], "owner-a", Status::completed);
  o.claimed_in_memory = true;
  o.attempt = 1;
  store->finish(o);
  store->flush();
  EXPECT_EQ(status_of(*store, job.id), Status::cancelled);  // the end of a cancelled job is lost
}

// ---- finish -------------------------------------------------------------------------------

TEST_P(StoreTest, FinishByTheLeaseHolderCompletesTheJob) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::completed));
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::completed);
  EXPECT_TRUE(same_json(got->result_json, std::string(R"({"ok":true})")));
  EXPECT_EQ(got->progress, 100);
  EXPECT_EQ(got->completed_at, kT0 + 1);
  EXPECT_TRUE(got->lease_owner.empty());
}

TEST_P(StoreTest, FinishByAnotherOwnerChangesNothing) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-b", Status::completed));
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::running);
  EXPECT_EQ(got->lease_owner, "owner-a");
  EXPECT_FALSE(got->result_json.has_value());
  EXPECT_EQ(store->stats().count(Status::completed), 0);
  EXPECT_EQ(store->stats().count(Status::running), 1);
}

TEST_P(StoreTest, FinishOfAJobNoLongerRunningChangesNothing) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::failed));
  store->finish(outcome_for(claimed[0], "owner-a", Status::completed));  // a second end
  store->flush();
  EXPECT_EQ(status_of(*store, job.id), Status::failed);
  const Stats s = store->stats();
  EXPECT_EQ(s.count(Status::failed), 1);
  EXPECT_EQ(s.count(Status::completed), 0);
  EXPECT_EQ(s.total, 1);
}

TEST_P(StoreTest, FinishAsRetryRequeuesWithTheAttemptUsed) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  auto o = outcome_for(claimed[0], "owner-a", Status::queued);
  o.error = "try again";
  store->finish(o);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->attempts, 1);
  EXPECT_EQ(got->run_at, kT0 + 5);
  EXPECT_TRUE(store->claim(claim_request("owner-a", 1, kT0 + 4)).empty());
  auto again = store->claim(claim_request("owner-a", 1, kT0 + 5));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 2);
}

TEST_P(StoreTest, FinishAsReleaseRequeuesWithoutUsingTheAttempt) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  auto o = outcome_for(claimed[0], "owner-a", Status::queued);
  o.release = true;
  store->finish(o);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->attempts, 0);
}

// Issue 21 item 3: the owner of attempt 1 was judged dead (a stalled worker), the job was taken
// back and the same worker claimed it again (attempt 2 running); then attempt 1's end and progress arrive.
// The owner matches, the attempt does not: neither may be applied.
TEST_P(StoreTest, EndOfAStaleAttemptIsRefusedAfterTheSameOwnerClaimedTheJobAgain) {
  auto store = open();
  store->register_worker(worker("owner-a", kT0));
  const auto job = make_job();
  store->insert({job});
  auto first = store->claim(claim_request("owner-a"));  // lease until kT0 + 60 s
  ASSERT_EQ(first.size(), 1u);
  ASSERT_EQ(first[0].attempts, 1);
  // The owner was judged dead (frozen past its lease, say) and its job taken back.
  ASSERT_EQ(store->recover_orphans(kT0 + 61'000, "other",
                                   [](const WorkerInfo& w) { return w.id == "owner-a"; }),
            1);
  auto second = store->claim(claim_request("owner-a", 1, kT0 + 61'000));
  ASSERT_EQ(second.size(), 1u);
  ASSERT_EQ(second[0].id, job.id);
  ASSERT_EQ(second[0].attempts, 2);

  store->save_progress({ProgressUpdate{first[0].rowid, 90, 9, 10, "attempt 1", "", std::nullopt,
                                       first[0].attempts}});
  auto stale = outcome_for(first[0], "owner-a", Status::completed);
  stale.result_json = R"({"attempt":1})";
  store->finish(stale);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::running);
  EXPECT_EQ(got->attempts, 2);
  EXPECT_FALSE(got->result_json.has_value());
  EXPECT_EQ(got->progress, 0);
  EXPECT_EQ(got->lease_owner, "owner-a");
  EXPECT_EQ(store->stats().count(Status::completed), 0);

  // Attempt 2's own progress and end are applied.
  store->save_progress({ProgressUpdate{second[0].rowid, 50, 5, 10, "attempt 2", "", std::nullopt,
                                       second[0].attempts}});
  store->flush();
  EXPECT_EQ(store->get(job.id)->progress, 50);
  auto current = outcome_for(second[0], "owner-a", Status::completed);
  current.result_json = R"({"attempt":2})";
  store->finish(current);
  store->flush();
  got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::completed);
  EXPECT_TRUE(same_json(got->result_json, std::string(R"({"attempt":2})")));
  EXPECT_EQ(store->stats().count(Status::completed), 1);
  EXPECT_EQ(store->stats().count(Status::running), 0);
}

// The same race as a retry: attempt 1's "try again" must not put attempt 2 back in the queue.
TEST_P(StoreTest, RetryOfAStaleAttemptIsRefused) {
  auto store = open();
  store->register_worker(worker("owner-a", kT0));
  const auto job = make_job();
  store->insert({job});
  auto first = store->claim(claim_request("owner-a"));
  ASSERT_EQ(first.size(), 1u);
  // The owner was judged dead (frozen past its lease, say) and its job taken back.
  ASSERT_EQ(store->recover_orphans(kT0 + 61'000, "other",
                                   [](const WorkerInfo& w) { return w.id == "owner-a"; }),
            1);
  auto second = store->claim(claim_request("owner-a", 1, kT0 + 61'000));
  ASSERT_EQ(second.size(), 1u);
  auto stale = outcome_for(first[0], "owner-a", Status::queued);
  stale.error = "attempt 1 failed";
  store->finish(stale);
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::running);
  EXPECT_EQ(got->attempts, 2);
  EXPECT_NE(got->error.value_or(""), "attempt 1 failed");
  EXPECT_EQ(got->run_at, kT0 + 61'000);  // not moved to the stale retry's kT0 + 5
}

TEST_P(StoreTest, SavedProgressIsReadBack) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->save_progress(
      {ProgressUpdate{claimed[0].rowid, 40, 4, 10, "four of ten", "counting", R"({"updates":4})"}});
  store->flush();
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->progress, 40);
  EXPECT_DOUBLE_EQ(got->progress_current, 4);
  EXPECT_DOUBLE_EQ(got->progress_total, 10);
  EXPECT_EQ(got->message, "four of ten");
  EXPECT_EQ(got->stage, "counting");
  EXPECT_TRUE(same_json(got->outcome_json, std::string(R"({"updates":4})")));
}

// ---- cancel and retry ---------------------------------------------------------------------

TEST_P(StoreTest, CancelOfAQueuedJobCancelsIt) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  EXPECT_EQ(store->cancel(job.id, kT0 + 1), CancelResult::cancelled);
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::cancelled);
  EXPECT_EQ(got->completed_at, kT0 + 1);
  EXPECT_TRUE(store->claim(claim_request("owner-a", 10)).empty());
}

TEST_P(StoreTest, CancelOfARunningJobIsARequestToItsOwner) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  ASSERT_EQ(store->claim(claim_request("owner-a")).size(), 1u);
  EXPECT_EQ(store->cancel(job.id, kT0 + 1), CancelResult::requested);
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::running);
  EXPECT_TRUE(got->cancel_requested);
  EXPECT_EQ(store->cancel_requests("owner-a"), std::vector<std::string>{job.id});
  EXPECT_TRUE(store->cancel_requests("owner-b").empty());
}

TEST_P(StoreTest, CancelOfAFinalJobIsNotCancellable) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::completed));
  store->flush();
  EXPECT_EQ(store->cancel(job.id, kT0 + 2), CancelResult::not_cancellable);
  EXPECT_EQ(status_of(*store, job.id), Status::completed);

  const auto other = make_job();
  store->insert({other});
  ASSERT_EQ(store->cancel(other.id, kT0), CancelResult::cancelled);
  EXPECT_EQ(store->cancel(other.id, kT0), CancelResult::not_cancellable);
}

TEST_P(StoreTest, CancelOfAnUnknownIdIsNotFound) {
  auto store = open();
  EXPECT_EQ(store->cancel("00000000-0000-7000-8000-000000000000", kT0), CancelResult::not_found);
  EXPECT_EQ(store->cancel("", kT0), CancelResult::not_found);
}

TEST_P(StoreTest, RetryTakesAFailedJobBackToTheQueue) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::failed));
  store->flush();
  ASSERT_EQ(status_of(*store, job.id), Status::failed);

  EXPECT_TRUE(store->retry(job.id, kT0 + 10));
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->attempts, 0);
  EXPECT_FALSE(got->error.has_value());
  EXPECT_EQ(got->run_at, kT0 + 10);
  auto again = store->claim(claim_request("owner-a", 1, kT0 + 10));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 1);
}

TEST_P(StoreTest, RetryTakesBackCancelledAndTimedOutButNotOthers) {
  auto store = open();
  const auto cancelled = make_job();
  const auto queued = make_job();
  const auto timed_out = make_job("slow");
  const auto completed = make_job("fast");
  store->insert({cancelled, queued, timed_out, completed});
  ASSERT_EQ(store->cancel(cancelled.id, kT0), CancelResult::cancelled);
  auto slow = store->claim(claim_request("owner-a", 1, kT0, {"slow"}));
  auto fast = store->claim(claim_request("owner-a", 1, kT0, {"fast"}));
  ASSERT_EQ(slow.size(), 1u);
  ASSERT_EQ(fast.size(), 1u);
  store->finish(outcome_for(slow[0], "owner-a", Status::timeout));
  store->finish(outcome_for(fast[0], "owner-a", Status::completed));
  store->flush();

  EXPECT_TRUE(store->retry(cancelled.id, kT0));
  EXPECT_TRUE(store->retry(timed_out.id, kT0));
  EXPECT_FALSE(store->retry(completed.id, kT0));
  EXPECT_FALSE(store->retry(queued.id, kT0));
  EXPECT_FALSE(store->retry("00000000-0000-7000-8000-000000000000", kT0));
  EXPECT_EQ(status_of(*store, completed.id), Status::completed);
  EXPECT_EQ(store->stats().count(Status::queued), 3);
}

TEST_P(StoreTest, RetryOfARunningJobIsRefused) {
  auto store = open();
  const auto job = make_job();
  store->insert({job});
  ASSERT_EQ(store->claim(claim_request("owner-a")).size(), 1u);
  EXPECT_FALSE(store->retry(job.id, kT0));
  EXPECT_EQ(status_of(*store, job.id), Status::running);
}

TEST_P(StoreTest, CancelAllCancelsQueuedAndRequestsRunning) {
  auto store = open();
  std::vector<NewJob> jobs;
  for (int i = 0; i < 4; ++i) jobs.push_back(make_job());
  store->insert(jobs);
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  auto done = store->claim(claim_request("owner-a"));
  ASSERT_EQ(done.size(), 1u);
  store->finish(outcome_for(done[0], "owner-a", Status::completed));
  store->flush();

  std::vector<std::string> running_ids;
  EXPECT_EQ(store->cancel_all(kT0 + 1, &running_ids), 3);  // 2 queued + 1 running
  EXPECT_EQ(running_ids, std::vector<std::string>{claimed[0].id});
  const Stats s = store->stats();
  EXPECT_EQ(s.count(Status::cancelled), 2);
  EXPECT_EQ(s.count(Status::running), 1);
  EXPECT_EQ(s.count(Status::completed), 1);
  EXPECT_EQ(s.count(Status::queued), 0);
  auto running = store->get(claimed[0].id);
  ASSERT_TRUE(running.has_value());
  EXPECT_TRUE(running->cancel_requested);
  EXPECT_EQ(store->cancel_all(kT0 + 2, nullptr), 1);  // only the running one is left to ask
}

// ---- counters -----------------------------------------------------------------------------

TEST_P(StoreTest, StatsCountersMatchTheRowsAfterMixedTransitions) {
  auto store = open();
  std::vector<NewJob> jobs;
  for (int i = 0; i < 10; ++i) jobs.push_back(make_job());
  store->insert(jobs);
  auto claimed = store->claim(claim_request("owner-a", 6));
  ASSERT_EQ(claimed.size(), 6u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::completed));
  store->finish(outcome_for(claimed[1], "owner-a", Status::completed));
  store->finish(outcome_for(claimed[2], "owner-a", Status::failed));
  store->finish(outcome_for(claimed[3], "owner-a", Status::timeout));
  store->finish(outcome_for(claimed[4], "owner-a", Status::queued));  // retry
  store->flush();
  ASSERT_EQ(store->cancel(jobs[9].id, kT0), CancelResult::cancelled);
  ASSERT_TRUE(store->retry(claimed[2].id, kT0));
  store->flush();

  const Stats s = store->stats();
  EXPECT_EQ(s.total, 10);
  EXPECT_EQ(s.count(Status::completed), 2);
  EXPECT_EQ(s.count(Status::failed), 0);
  EXPECT_EQ(s.count(Status::timeout), 1);
  EXPECT_EQ(s.count(Status::cancelled), 1);
  EXPECT_EQ(s.count(Status::running), 1);
  EXPECT_EQ(s.count(Status::queued), 5);  // 3 never claimed + the retry + the manual retry
  EXPECT_EQ(s.count(Status::created), 0);

  TestDb& raw = db();
  for (int i = 0; i < kStatusCount; ++i) {
    const std::string name(to_string(static_cast<Status>(i)));
    EXPECT_EQ(raw.integer("SELECT count(*) FROM jobs WHERE status = '" + name + "'"),
              s.by_status[i])
        << name;
  }
}

// ---- workers and recovery -----------------------------------------------------------------

TEST_P(StoreTest, RegisteredWorkersAreListedAndHeartbeatsExtendLeases) {
  auto store = open();
  store->register_worker(worker("w-1", kT0));
  auto job = make_job();
  store->insert({job});
  ASSERT_EQ(store->claim(claim_request("w-1")).size(), 1u);
  store->heartbeat("w-1", kT0 + 1000, 60'000);
  store->flush();
  auto workers = store->workers();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].id, "w-1");
  EXPECT_EQ(workers[0].heartbeat_at, kT0 + 1000);
  EXPECT_EQ(workers[0].state, "running");
  auto got = store->get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->lease_expires_at, kT0 + 61'000);
  store->deregister_worker("w-1");
  EXPECT_EQ(store->workers().at(0).state, "stopped");
}

// Published types (docs/workers.md): a worker's entries are replaced at each publish, unchanged
// options keep their published_at, and a stopped worker's entry lasts until a running worker
// publishes the same type.
TEST_P(StoreTest, PublishedTypesAreReplacedPerWorkerAndSupersedeStoppedWorkers) {
  auto store = open();
  EXPECT_TRUE(store->published_types().empty());
  store->register_worker(worker("w-1", kT0));
  store->publish_types("w-1", {{"", "resize", R"({"max_attempts":2})"}, {"", "mail", "{}"}}, kT0);
  auto rows = store->published_types();
  ASSERT_EQ(rows.size(), 2u);  // by type
  EXPECT_EQ(rows[0].type, "mail");
  EXPECT_EQ(rows[1].type, "resize");
  EXPECT_EQ(rows[1].worker_id, "w-1");
  EXPECT_EQ(rows[1].options_json, R"({"max_attempts":2})");
  EXPECT_EQ(rows[1].published_at, kT0);
  EXPECT_EQ(rows[1].refreshed_at, kT0);

  // A heartbeat's refresh: resize unchanged (published_at kept), mail's options changed, and a
  // type no longer published is gone.
  store->publish_types("w-1", {{"", "resize", R"({"max_attempts":2})"}, {"", "report", "{}"}},
                       kT0 + 5000);
  rows = store->published_types();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].type, "report");
  EXPECT_EQ(rows[0].published_at, kT0 + 5000);
  EXPECT_EQ(rows[1].type, "resize");
  EXPECT_EQ(rows[1].published_at, kT0);
  EXPECT_EQ(rows[1].refreshed_at, kT0 + 5000);
  store->publish_types("w-1", {{"", "resize", R"({"max_attempts":4})"}, {"", "report", "{}"}},
                       kT0 + 10'000);
  EXPECT_EQ(store->published_types()[1].published_at, kT0 + 10'000);

  // w-1 stops: its entries stay (the types stay known). A running w-2 publishing resize
  // supersedes w-1's resize; w-1's report stays. A running w-3's entries are never deleted.
  store->deregister_worker("w-1");
  store->register_worker(worker("w-3", kT0 + 11'000));
  store->publish_types("w-3", {{"", "resize", "{}"}}, kT0 + 11'000);
  store->register_worker(worker("w-2", kT0 + 12'000));
  store->publish_types("w-2", {{"", "resize", R"({"timeout_ms":30000})"}}, kT0 + 12'000);
  rows = store->published_types();
  std::vector<std::string> got;
  for (const auto& r : rows) got.push_back(r.type + "@" + r.worker_id);
  EXPECT_EQ(got, (std::vector<std::string>{"report@w-1", "resize@w-2", "resize@w-3"}));
}

TEST_P(StoreTest, RecoverOrphansRequeuesDeadOwnersJobsFailsExhaustedAndSparesTheLiving) {
  auto store = open();
  store->register_worker(worker("dead-owner", kT0 - 100'000));
  store->register_worker(worker("live-owner", kT0));
  const auto retryable = make_job("work", priority::urgent, kT0, 3);
  const auto exhausted = make_job("work", priority::high, kT0, 1);
  const auto living = make_job("work", priority::low, kT0, 3);
  const auto waiting = make_job("work", priority::maintenance, kT0 + 100'000, 3);
  store->insert({retryable, exhausted, living, waiting});
  ASSERT_EQ(store->claim(claim_request("dead-owner", 2)).size(), 2u);
  ASSERT_EQ(store->claim(claim_request("live-owner", 1)).size(), 1u);

  std::vector<std::string> asked;
  const int64_t n = store->recover_orphans(kT0 + 10, "self", [&](const WorkerInfo& w) {
    asked.push_back(w.id);
    return w.id == "dead-owner";
  });
  EXPECT_EQ(n, 2);
  EXPECT_NE(std::find(asked.begin(), asked.end(), "dead-owner"), asked.end());

  auto r = store->get(retryable.id);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, Status::queued);
  EXPECT_EQ(r->attempts, 1);
  EXPECT_TRUE(r->lease_owner.empty());

  auto e = store->get(exhausted.id);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->status, Status::failed);
  ASSERT_TRUE(e->error.has_value());
  EXPECT_NE(e->error->find("dead-owner"), std::string::npos) << *e->error;

  auto l = store->get(living.id);
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->status, Status::running);
  EXPECT_EQ(l->lease_owner, "live-owner");

  EXPECT_EQ(status_of(*store, waiting.id), Status::queued);
  for (const auto& w : store->workers()) {
    if (w.id == "dead-owner") {
      EXPECT_EQ(w.state, "dead");
    }
  }

  // The requeued job is claimable again, by anyone.
  auto again = store->claim(claim_request("self", 10, kT0 + 10));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, retryable.id);
  EXPECT_EQ(again[0].attempts, 2);

  const Stats s = store->stats();
  EXPECT_EQ(s.count(Status::failed), 1);
  EXPECT_EQ(s.count(Status::running), 2);
  EXPECT_EQ(s.count(Status::queued), 1);
}

TEST_P(StoreTest, RecoverOrphansNeverTakesTheCallersOwnJobs) {
  auto store = open();
  store->register_worker(worker("self", kT0));
  const auto job = make_job();
  store->insert({job});
  ASSERT_EQ(store->claim(claim_request("self")).size(), 1u);
  EXPECT_EQ(store->recover_orphans(kT0 + 10, "self", [](const WorkerInfo&) { return true; }), 0);
  EXPECT_EQ(status_of(*store, job.id), Status::running);
}

// A lease is not judged by a clock (a step or an outage would expire a live owner's lease): the
// owner judged alive keeps its job however late `now` is; judged dead, it loses it.
TEST_P(StoreTest, RecoverOrphansLeavesALiveOwnersJobWhateverTheClockSaysAndTakesItFromADeadOne) {
  auto store = open();
  store->register_worker(worker("slow-owner", kT0));
  const auto job = make_job();
  store->insert({job});
  ASSERT_EQ(store->claim(claim_request("slow-owner")).size(), 1u);  // lease until kT0 + 60 s
  EXPECT_EQ(
      store->recover_orphans(kT0 + 3'600'000, "self", [](const WorkerInfo&) { return false; }), 0);
  EXPECT_EQ(status_of(*store, job.id), Status::running);
  EXPECT_EQ(store->recover_orphans(kT0 + 10, "self", [](const WorkerInfo&) { return true; }), 1);
  EXPECT_EQ(status_of(*store, job.id), Status::queued);
}

// ---- commit listener ----------------------------------------------------------------------

TEST_P(StoreTest, CommitListenerReceivesTransitionsAfterTheyAreCommitted) {
  auto store = open();
  std::mutex m;
  std::vector<Transition> seen;
  std::vector<std::string> status_in_file;  // read by another connection inside the listener
  std::thread::id listener_thread;
  const std::string file = path();
  store->set_commit_listener([&](std::vector<Transition>& transitions) {
    TestDb& raw = db();
    std::lock_guard lock(m);
    listener_thread = std::this_thread::get_id();
    for (auto& t : transitions) {
      seen.push_back(t);
      status_in_file.push_back(raw.text("SELECT status FROM jobs WHERE id = '" + t.job_id + "'"));
    }
  });

  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-a", Status::completed));
  const auto other = make_job();
  store->insert({other});
  store->cancel(other.id, kT0);
  store->flush();

  std::lock_guard lock(m);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].job_id, job.id);
  EXPECT_EQ(seen[0].from, Status::created);
  EXPECT_EQ(seen[0].to, Status::queued);
  EXPECT_EQ(seen[1].from, Status::queued);
  EXPECT_EQ(seen[1].to, Status::running);
  EXPECT_EQ(seen[1].attempt, 1);
  EXPECT_EQ(seen[2].from, Status::running);
  EXPECT_EQ(seen[2].to, Status::completed);
  EXPECT_EQ(seen[2].result_json, std::optional<std::string>(R"({"ok":true})"));
  EXPECT_EQ(seen[3].job_id, other.id);
  EXPECT_EQ(seen[3].to, Status::queued);
  EXPECT_EQ(seen[4].job_id, other.id);
  EXPECT_EQ(seen[4].from, Status::queued);
  EXPECT_EQ(seen[4].to, Status::cancelled);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(status_in_file[i], to_string(seen[i].to)) << "transition " << i;
    EXPECT_EQ(seen[i].job_type, "work");
  }
  // The listener runs on whichever thread committed: the writer, or a caller that found the
  // writer idle and committed its own operation (no hand-off). Either way after the commit.
  (void)listener_thread;
}

TEST_P(StoreTest, CommitListenerHearsNothingOfARejectedInsertOrALostLease) {
  auto store = open();
  std::mutex m;
  std::vector<Transition> seen;
  store->set_commit_listener([&](std::vector<Transition>& transitions) {
    std::lock_guard lock(m);
    seen.insert(seen.end(), transitions.begin(), transitions.end());
  });
  auto orphan = make_job();
  orphan.parent_id = "00000000-0000-7000-8000-000000000000";
  EXPECT_THROW(store->insert({make_job(), orphan}), ValidationError);
  const auto job = make_job();
  store->insert({job});
  auto claimed = store->claim(claim_request("owner-a"));
  ASSERT_EQ(claimed.size(), 1u);
  store->finish(outcome_for(claimed[0], "owner-b", Status::completed));
  store->flush();
  std::lock_guard lock(m);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].to, Status::queued);
  EXPECT_EQ(seen[1].to, Status::running);
}

// ---- closing ------------------------------------------------------------------------------

TEST_P(StoreTest, WritesAfterCloseAreStoreErrors) {
  auto store = open();
  store->close();
  EXPECT_THROW(store->insert({make_job()}), StoreError);
  store->flush();  // returns at once
  store->close();  // idempotent
}

// ---- a full disk (issue 21 item 1) --------------------------------------------------------

// A small tmpfs of the test's own (the store's file on it), and a file that fills it up.
class SmallDisk {
 public:
  explicit SmallDisk(const std::filesystem::path& dir) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=4m") != 0)
      error_ = std::string("mounting a 4 MB tmpfs is not permitted here: ") + std::strerror(errno);
    else
      mounted_ = true;
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  // Writes until the disk refuses (ENOSPC); returns the bytes written.
  int64_t fill() {
    const int fd = ::open(file("filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 0;
    std::vector<char> block(64 * 1024, 'x');
    int64_t written = 0;
    for (;;) {
      const ssize_t n = ::write(fd, block.data(), block.size());
      if (n <= 0) break;  // ENOSPC: full
      written += n;
    }
    ::close(fd);
    return written;
  }
  void free_space() { std::filesystem::remove(file("filler")); }

 private:
  std::filesystem::path dir_;
  bool mounted_ = false;
  std::string error_;
};

// The end of a job that cannot be written (disk full) is kept and retried until it commits: the
// job is not completed meanwhile, health() says degraded with the reason, an enqueue is refused
// at once with the store's error, and once space is freed the end commits (the listener hears
// it) and health() is ok again. On main the end was printed and dropped: the job stayed running.
TEST_F(SqliteStoreTest, EndOfAJobThatTheFullDiskRefusedIsKeptAndCommitsOnceSpaceIsFreed) {
  SmallDisk disk(dir().path() / "small");
  if (!disk.mounted()) GTEST_SKIP() << disk.error();
  auto store = open_sqlite_store(disk.file("jobs.db"));
  std::mutex m;
  std::vector<Transition> heard;
  store->set_commit_listener([&](std::vector<Transition>& ts) {
    std::lock_guard lock(m);
    for (auto& t : ts)
      if (!t.log_lines) heard.push_back(t);
  });
  store->register_worker(worker("owner-a", kT0));
  const auto a = make_job(), b = make_job();
  store->insert({a, b});
  auto claimed = store->claim(claim_request("owner-a", 2));
  ASSERT_EQ(claimed.size(), 2u);
  EXPECT_EQ(store->health(), "ok");

  ASSERT_GT(disk.fill(), 0);
  for (const auto& job : claimed) {
    LogRecord line;
    line.job_id = job.id;
    line.attempt = job.attempts;
    line.at = kT0 + 1;
    line.message = "last words of " + job.id;
    store->append_logs([line] { return std::vector<LogRecord>{line}; });
    store->finish(outcome_for(job, "owner-a", Status::completed));
  }
  store->flush();  // returns: the ends are kept for a retry
  const std::string degraded = store->health();
  EXPECT_EQ(degraded.rfind("degraded: writes failing since ", 0), 0u) << degraded;
  EXPECT_NE(degraded.find("database or disk is full"), std::string::npos) << degraded;
  EXPECT_EQ(status_of(*store, a.id), Status::running);
  EXPECT_EQ(status_of(*store, b.id), Status::running);
  {
    std::lock_guard lock(m);
    for (const auto& t : heard) EXPECT_NE(t.to, Status::completed) << t.job_id;
  }
  // A caller's write is refused at once (it is not kept): the caller knows.
  try {
    store->insert({make_job()});
    ADD_FAILURE() << "an enqueue on a full disk succeeded";
  } catch (const StoreError& e) {
    EXPECT_EQ(e.code() & 0xff, SQLITE_FULL) << e.what();
  }
  // Still full a while later: still kept (retried with backoff meanwhile).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(status_of(*store, a.id), Status::running);
  EXPECT_EQ(store->health().rfind("degraded: ", 0), 0u);

  disk.free_space();
  ASSERT_TRUE(jobforge::testing::eventually([&] {
    return status_of(*store, a.id) == Status::completed &&
           status_of(*store, b.id) == Status::completed;
  })) << store->health();
  EXPECT_TRUE(jobforge::testing::eventually([&] { return store->health() == "ok"; }))
      << store->health();
  // The listener runs after the commit, on the writer: it may still be on its way.
  const auto completed = [&] {
    std::lock_guard lock(m);
    int n = 0;
    for (const auto& t : heard) n += t.to == Status::completed;
    return n;
  };
  EXPECT_TRUE(jobforge::testing::eventually([&] { return completed() == 2; })) << completed();
  // Nothing lost: the log lines (written before the ends), the counters, the rows.
  for (const auto& job : claimed) {
    LogQuery q;
    q.job_id = job.id;
    auto lines = store->logs(q);
    ASSERT_EQ(lines.size(), 1u) << job.id;
    EXPECT_EQ(lines[0].message, "last words of " + job.id);
  }
  const Stats s = store->stats();
  EXPECT_EQ(s.count(Status::completed), 2);
  EXPECT_EQ(s.count(Status::running), 0);
  EXPECT_EQ(s.total, 2);  // the refused enqueue wrote nothing
  store->close();
}

// A job claimed in memory (alone on the file) whose end the full disk refused stays held: no
// claim hands it out again while its end waits, and the end commits once space is freed.
TEST_F(SqliteStoreTest, JobClaimedInMemoryStaysHeldWhileItsEndWaitsForSpace) {
  SmallDisk disk(dir().path() / "small");
  if (!disk.mounted()) GTEST_SKIP() << disk.error();
  auto store = open_sqlite_store(disk.file("jobs.db"));
  const auto job = make_job();
  store->insert({job});
  auto req = claim_request("owner-a");
  req.durable = false;
  auto claimed = store->claim(req);
  ASSERT_EQ(claimed.size(), 1u);
  claimed[0].attempts = 1;  // the engine counts the attempt of a claim in memory

  ASSERT_GT(disk.fill(), 0);
  auto o = outcome_for(claimed[0], "owner-a", Status::completed);
  o.claimed_in_memory = true;
  store->finish(o);
  store->flush();
  EXPECT_EQ(store->health().rfind("degraded: ", 0), 0u) << store->health();
  // Still 'queued' in the file (its start was never written): a claim in memory must skip it,
  // so the rolled-back end must not have let go of it.
  EXPECT_EQ(status_of(*store, job.id), Status::queued);
  EXPECT_TRUE(store->claim(req).empty());

  disk.free_space();
  ASSERT_TRUE(jobforge::testing::eventually([&] {
    return status_of(*store, job.id) == Status::completed;
  })) << store->health();
  EXPECT_TRUE(jobforge::testing::eventually([&] { return store->health() == "ok"; }));
  EXPECT_TRUE(store->claim(req).empty());
  EXPECT_EQ(store->get(job.id)->attempts, 1);
  EXPECT_EQ(store->stats().count(Status::completed), 1);
  store->close();
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreTest, ::testing::Values(Backend::sqlite, Backend::postgres),
                         jobforge::testing::backend_name);

// ---- what only the PostgreSQL store has -----------------------------------------------------

class PostgresStoreTest : public StoreTest {
 protected:
  Backend backend() const override { return Backend::postgres; }
  // The store's connections carry this application_name, so the test can cut exactly them.
  std::string app_name() const { return "jf_" + db().path().substr(db().path().size() - 12); }
  std::string url() const { return path() + "&application_name=" + app_name(); }
  std::unique_ptr<Store> open_pg(const PostgresOptions& options = {}) {
    return open_postgres_store(url(), options);
  }
  // What a server restart does to the store: every connection it holds is closed under it.
  int64_t cut_connections() {
    return db().integer(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '" +
        app_name() + "'");
  }
};

TEST_F(PostgresStoreTest, ClaimsAreAlwaysDurable) {
  auto store = open_pg();
  EXPECT_EQ(store->register_worker(
                worker("w-1", kT0), [](const WorkerInfo&) { return false; },
                /*allow_memory=*/true),
            "durable");
  EXPECT_FALSE(store->set_claim_mode("w-1", "memory", [](const WorkerInfo&) { return false; }));
  ClaimRequest in_memory = claim_request("w-1");
  in_memory.durable = false;
  store->insert({make_job()});
  EXPECT_THROW(store->claim(in_memory), StoreError);
  EXPECT_EQ(store->claim(claim_request("w-1")).size(), 1u);
}

TEST_F(PostgresStoreTest, SchemaIsRecordedInTheMigrationsTableAndReopeningKeepsRows) {
  auto job = make_job();
  {
    auto store = open_pg();
    store->insert({job});
  }
  EXPECT_EQ(db().integer("SELECT max(version) FROM jobforge_migrations"), 3);  // every migration
  EXPECT_EQ(db().integer("SELECT count(*) FROM jobforge_migrations"), 3);
  auto store = open_pg();
  EXPECT_EQ(status_of(*store, job.id), Status::queued);
  EXPECT_EQ(store->integrity_check(), "ok");
  EXPECT_EQ(db().text("SELECT jsonb_typeof(payload) FROM jobs"), "object");
}

TEST_F(PostgresStoreTest, SchemaFromANewerJobforgeIsRefused) {
  { auto store = open_pg(); }
  db().exec("INSERT INTO jobforge_migrations (version, applied_at) VALUES (99, 0)");
  try {
    open_pg();
    FAIL() << "expected StoreError";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 99"), std::string::npos) << e.what();
  }
}

TEST_F(PostgresStoreTest, UnreachableServerIsAStoreErrorWithoutThePassword) {
  try {
    open_postgres_store("postgresql://someone:s3cret@127.0.0.1:1/nowhere?connect_timeout=2");
    FAIL() << "expected StoreError";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot connect"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("s3cret"), std::string::npos) << e.what();
  }
}

TEST_F(PostgresStoreTest, InsertsAndCancelRequestsWakeOtherStoresThroughNotify) {
  auto a = open_pg();
  auto b = open_pg();
  std::mutex m;
  std::condition_variable cv;
  std::vector<StoreWakeup> heard;
  a->set_wakeup_listener([&](const StoreWakeup& w) {
    std::lock_guard lock(m);
    heard.push_back(w);
    cv.notify_all();
  });
  auto heard_kind = [&](StoreWakeup::Kind kind, const std::string& worker_id) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, jobforge::testing::kPatience, [&] {
      return std::any_of(heard.begin(), heard.end(), [&](const StoreWakeup& w) {
        return w.kind == kind && w.worker_id == worker_id;
      });
    });
  };
  // The listener connects in the background: keep inserting until one is heard.
  auto job = make_job();
  b->insert({job});
  bool woken = heard_kind(StoreWakeup::Kind::jobs_due, "");
  EXPECT_TRUE(woken);
  auto claimed = a->claim(claim_request("w-a"));
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(b->cancel(job.id, kT0), CancelResult::requested);
  EXPECT_TRUE(heard_kind(StoreWakeup::Kind::cancel_requested, "w-a"));
  EXPECT_EQ(a->cancel_requests("w-a"), std::vector<std::string>{job.id});
}

TEST_F(PostgresStoreTest, LostConnectionsAreReopenedAndEndsOfJobsAreNotLost) {
  auto store = open_pg();
  std::vector<NewJob> jobs;
  for (int i = 0; i < 20; ++i) jobs.push_back(make_job());
  store->insert(jobs);
  auto claimed = store->claim(claim_request("w-1", 20));
  ASSERT_EQ(claimed.size(), 20u);
  ASSERT_GE(cut_connections(), 1);
  // Ends written while the writer's connection is dead: retried on a new one.
  for (auto& job : claimed) store->finish(outcome_for(job, "w-1", Status::completed));
  store->flush();
  EXPECT_EQ(store->stats().count(Status::completed), 20);
  // Reads and claims come back too, and the health says ok again.
  cut_connections();
  auto more = make_job();
  store->insert({more});
  EXPECT_EQ(store->claim(claim_request("w-1")).size(), 1u);
  EXPECT_EQ(status_of(*store, more.id), Status::running);
  EXPECT_TRUE(jobforge::testing::eventually([&] { return store->health() == "ok"; }))
      << store->health();
}

// ---- secure defaults (docs/security.md) --------------------------------------------------------

TEST(SecureDefaults, NewSqliteFilesAreOwnerOnlyWhateverTheUmask) {
  TempDir dir;
  const mode_t old = ::umask(022);
  const std::string path = (dir.path() / "jobs.db").string();
  {
    auto store = open_sqlite_store(path);
    store->insert({make_job()});
    store->flush();
    for (const char* suffix : {"", "-wal", "-shm"}) {
      struct stat st {};
      ASSERT_EQ(::stat((path + suffix).c_str(), &st), 0) << suffix;
      EXPECT_EQ(st.st_mode & 0777, 0600u) << suffix;
    }
  }
  ::umask(old);
}

TEST(SecureDefaults, RedactUrlHidesEveryPassword) {
  EXPECT_EQ(redact_url("postgresql://u:pw@h/db"), "postgresql://u:***@h/db");
  EXPECT_EQ(redact_url("postgres://u@h/db?sslmode=require&password=pw"),
            "postgres://u@h/db?sslmode=require&password=***");
  EXPECT_EQ(redact_url("postgresql://h/db?sslpassword=pw&x=1"),
            "postgresql://h/db?sslpassword=***&x=1");
  EXPECT_EQ(redact_url("postgresql://u:p@w/x@h/db"), "postgresql://u:***@h/db");
  EXPECT_EQ(redact_url("postgresql:///test"), "postgresql:///test");
  EXPECT_EQ(redact_url("dir/a:b@c.db"), "dir/a:b@c.db");
}

TEST(SecureDefaults, ConnectErrorsNameNoPassword) {
  // libpq quotes a token it cannot decode, and the whole URL when it cannot parse it.
  for (const std::string url :
       {"postgresql://u:Secr3tPw%zz@localhost/test", "postgresql://u:Secr3tPw@[::1/test",
        "postgresql://u@127.0.0.1:1/test?password=Secr3tPw"}) {
    try {
      open_postgres_store(url);
      ADD_FAILURE() << "connected to " << redact_url(url);
    } catch (const StoreError& e) {
      EXPECT_EQ(std::string(e.what()).find("Secr3t"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cannot connect"), std::string::npos) << e.what();
    }
  }
}
