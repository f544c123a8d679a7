// Workflows through the engine on both stores (a real SQLite file, a fresh PostgreSQL schema):
// queues, limits, unique keys, dependencies, batches, delayed jobs, schedules, retention and
// run_now. Two engines on one database stand for two processes or hosts (each has its own store
// connections and worker row).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "jobforge/engine.hpp"
#include "jobforge/store.hpp"
#include "test_support.hpp"

namespace jobforge {
namespace {

using namespace std::chrono_literals;
using testing::Backend;
using testing::TestDb;

// Where a test's database lives (created on first use): file(name) is a SQLite path, or the
// PostgreSQL schema's URL.
class Location {
 public:
  explicit Location(std::function<Backend()> backend) : backend_(std::move(backend)) {}
  TestDb& db() const {
    if (!db_) db_ = std::make_unique<TestDb>(backend_());
    return *db_;
  }
  std::string file(const std::string& name) const { return db().file(name); }
  bool postgres() const { return db().postgres(); }

 private:
  std::function<Backend()> backend_;
  mutable std::unique_ptr<TestDb> db_;
};

EngineConfig config_for(const Location& dir, int workers = 2) {
  EngineConfig c;
  c.path = dir.file("jobs.db");
  c.workers = workers;
  c.poll_ms = 20;
  c.heartbeat_ms = 50;
  c.lease_ms = 10'000;
  c.default_retry_delay_ms = 5;
  return c;
}

// Returns its payload; counts how many run at once, per type.
class Tracking final : public Processor {
 public:
  explicit Tracking(std::chrono::milliseconds hold = 0ms) : hold_(hold) {}
  std::string run(Context& ctx, const std::string& payload) override {
    const int now = ++running_;
    int seen = max_seen_.load();
    while (now > seen && !max_seen_.compare_exchange_weak(seen, now)) {
    }
    {
      std::lock_guard lock(mutex_);
      starts_.push_back(std::chrono::steady_clock::now());
      order_.push_back(ctx.job_id());
    }
    std::this_thread::sleep_for(hold_);
    --running_;
    if (payload.find("\"fail\"") != std::string::npos)
      throw ProcessorFailure("asked to fail", "", true);
    return payload;
  }
  int max_seen() const { return max_seen_; }
  std::vector<std::chrono::steady_clock::time_point> starts() {
    std::lock_guard lock(mutex_);
    return starts_;
  }
  std::vector<std::string> order() {
    std::lock_guard lock(mutex_);
    return order_;
  }

 private:
  std::chrono::milliseconds hold_;
  std::atomic<int> running_{0}, max_seen_{0};
  std::mutex mutex_;
  std::vector<std::chrono::steady_clock::time_point> starts_;
  std::vector<std::string> order_;
};

class ReadsDependencies final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    return ctx.dependency_results_json();
  }
};

JobSpec spec(const std::string& type, const std::string& payload = "{}") {
  JobSpec s;
  s.type = type;
  s.payload_json = payload;
  return s;
}

Job wait_final(Engine& e, const std::string& id) {
  auto j = e.wait(id, testing::kPatience);
  EXPECT_TRUE(j.has_value()) << "job " << id << " did not end";
  return j ? *j : Job{};
}

class WorkflowTest : public ::testing::TestWithParam<Backend> {
 protected:
  Location dir{[this] { return GetParam(); }};
};

// ---- queues and limits ------------------------------------------------------------------------

TEST_P(WorkflowTest, AWorkerServesOnlyItsQueues) {
  auto cfg = config_for(dir);
  cfg.queues = {"exports"};
  Engine engine(cfg);
  engine.register_processor("work", std::make_shared<Tracking>());
  JobSpec a = spec("work"), b = spec("work");
  a.queue = "exports";
  b.queue = "images";
  const Job ja = engine.enqueue(a), jb = engine.enqueue(b);
  EXPECT_EQ(ja.queue, "exports");
  engine.start();
  EXPECT_EQ(wait_final(engine, ja.id).status, Status::completed);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(engine.get(jb.id)->status, Status::queued);  // nobody here serves "images"
  engine.stop();
}

TEST_P(WorkflowTest, MaxConcurrentPerTypeHoldsAcrossTwoEnginesOnOneFile) {
  auto tracking = std::make_shared<Tracking>(30ms);
  ProcessorOptions limited;
  limited.max_concurrent = 1;
  Engine a(config_for(dir, 3)), b(config_for(dir, 3));
  a.register_processor("scan", tracking, limited);
  b.register_processor("scan", tracking, limited);
  std::vector<Job> jobs;
  for (int i = 0; i < 12; ++i) jobs.push_back(a.enqueue(spec("scan")));
  a.start();
  b.start();
  for (const auto& j : jobs) EXPECT_EQ(wait_final(a, j.id).status, Status::completed);
  EXPECT_EQ(tracking->max_seen(), 1);
  a.stop();
  b.stop();
}

TEST_P(WorkflowTest, MaxConcurrentPerQueueLimitsEveryTypeInIt) {
  auto tracking = std::make_shared<Tracking>(20ms);
  Engine engine(config_for(dir, 4));
  engine.register_processor("x", tracking);
  engine.register_processor("y", tracking);
  engine.set_queue_limits("heavy", 2, 0);
  std::vector<Job> jobs;
  for (int i = 0; i < 10; ++i) {
    JobSpec s = spec(i % 2 ? "x" : "y");
    s.queue = "heavy";
    jobs.push_back(engine.enqueue(s));
  }
  engine.start();
  for (const auto& j : jobs) EXPECT_EQ(wait_final(engine, j.id).status, Status::completed);
  EXPECT_LE(tracking->max_seen(), 2);
  EXPECT_GE(tracking->max_seen(), 1);
  engine.stop();
}

TEST_P(WorkflowTest, RateLimitSpacesStartsAcrossTwoEngines) {
  auto tracking = std::make_shared<Tracking>();
  ProcessorOptions limited;
  limited.rate = "20/s";  // one token every 50 ms, bursts of 2
  Engine a(config_for(dir)), b(config_for(dir));
  a.register_processor("call", tracking, limited);
  b.register_processor("call", tracking, limited);
  std::vector<Job> jobs;
  for (int i = 0; i < 12; ++i) jobs.push_back(a.enqueue(spec("call")));
  a.start();
  b.start();
  for (const auto& j : jobs) EXPECT_EQ(wait_final(a, j.id).status, Status::completed);
  const auto starts = tracking->starts();
  ASSERT_EQ(starts.size(), 12u);
  // 12 starts at 20/s with a burst of 2 need at least (12 - 2) / 20 s = 500 ms.
  EXPECT_GE(starts.back() - starts.front(), 450ms);
  a.stop();
  b.stop();
}

TEST_P(WorkflowTest, BadLimitsAreValidationErrors) {
  Engine engine(config_for(dir));
  ProcessorOptions o;
  o.rate = "fast";
  EXPECT_THROW(engine.register_processor("x", std::make_shared<Tracking>(), o), ValidationError);
  o.rate = "0/s";
  EXPECT_THROW(engine.register_processor("x", std::make_shared<Tracking>(), o), ValidationError);
  EXPECT_THROW(engine.set_queue_limits("q", -1, 0), ValidationError);
  EXPECT_EQ(RateLimit::parse("100/m").period_ms, 60'000);
  EXPECT_EQ(RateLimit::parse("1/30s").period_ms, 30'000);
}

TEST_P(WorkflowTest, MaxQueueSizeRefusesTheNextJobAndWritesNothing) {
  auto cfg = config_for(dir);
  cfg.max_queue_size = 3;
  Engine engine(cfg);
  engine.register_processor("work", std::make_shared<Tracking>());
  for (int i = 0; i < 3; ++i) engine.enqueue(spec("work"));
  try {
    engine.enqueue(spec("work"));
    FAIL() << "a fourth job was accepted";
  } catch (const QueueFull& e) {
    EXPECT_NE(std::string(e.what()).find("queue 'default' is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.stats().count(Status::queued), 3);
  JobSpec other = spec("work");
  other.queue = "other";  // another queue has room
  EXPECT_NO_THROW(engine.enqueue(other));
  engine.set_queue_limits("other", 0, 1);
  EXPECT_THROW(engine.enqueue(other), QueueFull);
}

// ---- unique keys ------------------------------------------------------------------------------

TEST_P(WorkflowTest, UniqueKeyReturnsTheQueuedJobAcrossEngines) {
  Engine a(config_for(dir)), b(config_for(dir));
  a.register_processor("sync", std::make_shared<Tracking>());
  b.register_processor("sync", std::make_shared<Tracking>());
  JobSpec s = spec("sync");
  s.unique_key = "sync:user:42";
  const Job first = a.enqueue(s);
  const Job again = b.enqueue(s);
  EXPECT_EQ(again.id, first.id);
  EXPECT_EQ(a.stats().count(Status::queued), 1);
  a.start();
  EXPECT_EQ(wait_final(a, first.id).status, Status::completed);
  a.stop();
  const Job after = b.enqueue(s);  // finished, no period: a new job
  EXPECT_NE(after.id, first.id);
  EXPECT_EQ(after.unique_key, std::optional<std::string>("sync:user:42"));
  EXPECT_FALSE(a.get(first.id)->unique_key.has_value());
}

// Four stores (four processes or hosts) insert the same new key at the same moment, key after
// key: every one gets the same job id and one row holds the key. On PostgreSQL the losers of the
// race meet the unique index (unique_violation) and answer with the winner's job.
TEST_P(WorkflowTest, UniqueKeyInsertedAtOnceByFourStoresMakesOneJob) {
  { Engine create(config_for(dir)); }
  constexpr int kStores = 4, kKeys = 25;
  std::vector<std::unique_ptr<Store>> stores;
  for (int i = 0; i < kStores; ++i) stores.push_back(open_store(dir.file("jobs.db")));
  std::vector<std::vector<std::string>> got(kStores, std::vector<std::string>(kKeys));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStores; ++i)
    threads.emplace_back([&, i] {
      for (int k = 0; k < kKeys; ++k) {
        ++ready;
        while (ready.load() < kStores * (k + 1)) std::this_thread::yield();  // a start line
        NewJob j;
        j.id = new_job_id();
        j.type = "sync";
        j.priority = 5;
        j.payload_json = "{}";
        j.max_attempts = 1;
        j.timeout_ms = 60'000;
        j.retry_delay_ms = 1'000;
        j.backoff = "fixed";
        j.created_at = j.run_at = now_ms();
        j.user_initiated = true;
        j.unique_key = "race:" + std::to_string(k);
        got[i][k] = stores[i]->insert_jobs({j}, InsertLimits{}).at(0);
      }
    });
  for (auto& t : threads) t.join();
  for (int k = 0; k < kKeys; ++k)
    for (int i = 1; i < kStores; ++i) EXPECT_EQ(got[i][k], got[0][k]) << "key " << k;
  EXPECT_EQ(dir.db().integer("SELECT count(*) FROM jobs"), kKeys);
  for (auto& st : stores) st->close();
}

TEST_P(WorkflowTest, UniqueKeyCanStayTakenForAPeriodAfterTheJobEnded) {
  Engine engine(config_for(dir));
  engine.register_processor("sync", std::make_shared<Tracking>());
  JobSpec s = spec("sync");
  s.unique_key = "k";
  s.unique_for_ms = 60'000;
  const Job first = engine.enqueue(s);
  engine.start();
  wait_final(engine, first.id);
  EXPECT_EQ(engine.enqueue(s).id, first.id);
  engine.stop();
  dir.db().exec("UPDATE jobs SET completed_at = completed_at - 120000");  // the period has passed
  EXPECT_NE(engine.enqueue(s).id, first.id);
}

TEST_P(WorkflowTest, TheStoreRefusesTwoRowsWithOneUniqueKey) {
  { Engine engine(config_for(dir)); }
  if (dir.postgres()) {
    dir.db().exec(
        "INSERT INTO jobs (id, type, status, payload, created_at, run_at, unique_key) VALUES "
        "('a', 't', 'queued', '{}', 1, 1, 'k')");
    // The second row must raise unique_violation; were it accepted, 'accepted' fails the test.
    dir.db().exec(
        "DO $$ BEGIN INSERT INTO jobs (id, type, status, payload, created_at, run_at, unique_key) "
        "VALUES ('b', 't', 'queued', '{}', 1, 1, 'k'); RAISE EXCEPTION 'accepted'; "
        "EXCEPTION WHEN unique_violation THEN NULL; END $$");
    EXPECT_EQ(dir.db().integer("SELECT count(*) FROM jobs"), 1);
    return;
  }
  dir.db().exec(
      "INSERT INTO jobs (id, type, status, payload, created_at, unique_key) VALUES ('a', 't', "
      "'queued', '{}', 1, 'k')");
  char* err = nullptr;
  sqlite3* db = nullptr;
  sqlite3_open(dir.file("jobs.db").c_str(), &db);
  EXPECT_NE(sqlite3_exec(db,
                         "INSERT INTO jobs (id, type, status, payload, created_at, unique_key) "
                         "VALUES ('b', 't', 'queued', '{}', 1, 'k')",
                         nullptr, nullptr, &err),
            SQLITE_OK);
  sqlite3_free(err);
  sqlite3_close(db);
}

// ---- dependencies -----------------------------------------------------------------------------

TEST_P(WorkflowTest, ADependentRunsAfterItsDependenciesAndReadsTheirResults) {
  Engine engine(config_for(dir));
  auto tracking = std::make_shared<Tracking>(20ms);
  engine.register_processor("step", tracking);
  engine.register_processor("join", std::make_shared<ReadsDependencies>());
  const Job a = engine.enqueue(spec("step", R"({"n": 1})"));
  const Job b = engine.enqueue(spec("step", R"({"n": 2})"));
  JobSpec js = spec("join");
  js.depends_on = {a.id, b.id};
  const Job join = engine.enqueue(js);
  EXPECT_EQ(join.status, Status::created);  // waiting
  engine.start();
  const Job done = wait_final(engine, join.id);
  ASSERT_EQ(done.status, Status::completed);
  EXPECT_NE(done.result_json->find(a.id), std::string::npos);
  // Compared as values: PostgreSQL's JSONB normalizes the text it stores (docs/postgresql.md).
  const std::string compact = nlohmann::json::parse(*done.result_json).dump();
  EXPECT_NE(compact.find("\"n\":2"), std::string::npos) << *done.result_json;
  EXPECT_LT(engine.get(a.id)->completed_at, done.started_at + 1);
  ASSERT_EQ(engine.dependencies(join.id).size(), 2u);
  engine.stop();
}

TEST_P(WorkflowTest, AFailedDependencyCancelsTheChainUnlessRunAnyway) {
  Engine engine(config_for(dir));
  engine.register_processor("step", std::make_shared<Tracking>());
  JobSpec bad = spec("step", R"({"fail": true})");
  bad.max_attempts = 1;
  std::vector<JobSpec> chain{bad, spec("step"), spec("step")};
  chain[1].depends_on_index = {0};
  chain[2].depends_on_index = {1};
  JobSpec anyway = spec("step");
  anyway.depends_on_index = {0};
  anyway.run_if_dependency_fails = true;
  chain.push_back(anyway);
  const auto jobs = engine.enqueue_many(chain);
  engine.start();
  EXPECT_EQ(wait_final(engine, jobs[0].id).status, Status::failed);
  const Job second = wait_final(engine, jobs[1].id), third = wait_final(engine, jobs[2].id);
  EXPECT_EQ(second.status, Status::cancelled);
  EXPECT_NE(second.error->find("dependency " + jobs[0].id + " ended failed"), std::string::npos);
  EXPECT_EQ(third.status, Status::cancelled);  // cascaded
  EXPECT_EQ(wait_final(engine, jobs[3].id).status, Status::completed);
  engine.stop();
}

TEST_P(WorkflowTest, DependenciesMustExistAndPointBackwards) {
  Engine engine(config_for(dir));
  engine.register_processor("step", std::make_shared<Tracking>());
  JobSpec s = spec("step");
  s.depends_on = {"no-such-job"};
  EXPECT_THROW(engine.enqueue(s), ValidationError);
  std::vector<JobSpec> specs{spec("step"), spec("step")};
  specs[0].depends_on_index = {1};  // forward: could make a cycle
  EXPECT_THROW(engine.enqueue_many(specs), ValidationError);
  EXPECT_EQ(engine.stats().total, 0);
}

// ---- batches ----------------------------------------------------------------------------------

TEST_P(WorkflowTest, ABatchCompletesWithASummaryWhenItsChildrenEnd) {
  Engine engine(config_for(dir));
  engine.register_processor("analyze", std::make_shared<Tracking>());
  BatchSpec batch;
  batch.parent = spec("batch_analyze", R"({"folder": "x"})");
  for (int i = 0; i < 5; ++i)
    batch.children.push_back(spec("analyze", i == 2 ? R"({"fail": 1})" : "{}"));
  const auto jobs = engine.enqueue_batch(batch);
  ASSERT_EQ(jobs.size(), 6u);
  EXPECT_EQ(jobs[0].status, Status::running);
  JobQuery children;
  children.parent_id = jobs[0].id;
  EXPECT_EQ(engine.jobs(children).size(), 5u);
  engine.start();
  const Job parent = wait_final(engine, jobs[0].id);
  EXPECT_EQ(parent.status, Status::completed);
  EXPECT_EQ(parent.progress, 100);
  EXPECT_EQ(nlohmann::json::parse(*parent.result_json),
            nlohmann::json::parse(R"({"total": 5, "completed": 4, "failed": 1})"));
  engine.stop();
}

TEST_P(WorkflowTest, BatchPolicyFailFastFailsTheParentAndCancelsTheRest) {
  Engine engine(config_for(dir, 1));
  engine.register_processor("analyze", std::make_shared<Tracking>(10ms));
  BatchSpec batch;
  batch.parent = spec("batch_analyze");
  batch.on_child_failure = "fail_fast";
  batch.children.push_back(spec("analyze", R"({"fail": 1})"));
  for (int i = 0; i < 20; ++i) batch.children.push_back(spec("analyze"));
  for (auto& c : batch.children) c.priority = 5;
  batch.children[0].priority = 1;  // runs first
  const auto jobs = engine.enqueue_batch(batch);
  engine.start();
  const Job parent = wait_final(engine, jobs[0].id);
  EXPECT_EQ(parent.status, Status::failed);
  EXPECT_NE(parent.error->find("child " + jobs[1].id + " failed"), std::string::npos)
      << *parent.error;
  int cancelled = 0;
  for (size_t i = 2; i < jobs.size(); ++i)
    cancelled += wait_final(engine, jobs[i].id).status == Status::cancelled;
  EXPECT_GT(cancelled, 0);
  engine.stop();
}

TEST_P(WorkflowTest, CancellingABatchCancelsItsUnfinishedChildren) {
  Engine engine(config_for(dir));
  engine.register_processor("analyze", std::make_shared<Tracking>());
  BatchSpec batch;
  batch.parent = spec("batch_export");
  batch.on_child_failure = "fail";
  for (int i = 0; i < 3; ++i) batch.children.push_back(spec("analyze"));
  const auto jobs = engine.enqueue_batch(batch);
  EXPECT_TRUE(engine.cancel(jobs[0].id));
  EXPECT_EQ(engine.get(jobs[0].id)->status, Status::cancelled);
  for (size_t i = 1; i < jobs.size(); ++i)
    EXPECT_EQ(engine.get(jobs[i].id)->status, Status::cancelled);
}

TEST_P(WorkflowTest, AnEmptyBatchIsCompletedAtOnce) {
  Engine engine(config_for(dir));
  BatchSpec batch;
  batch.parent = spec("batch_analyze");
  const auto jobs = engine.enqueue_batch(batch);
  EXPECT_EQ(jobs[0].status, Status::completed);
  batch.on_child_failure = "sometimes";
  EXPECT_THROW(engine.enqueue_batch(batch), ValidationError);
}

// ---- delayed jobs and schedules ---------------------------------------------------------------

TEST_P(WorkflowTest, ADelayedJobStartsWhenDueWithoutWaitingForThePoll) {
  auto cfg = config_for(dir);
  cfg.poll_ms = 5'000;  // a poll would be far too late: the dispatcher must wake on its own
  Engine engine(cfg);
  auto tracking = std::make_shared<Tracking>();
  engine.register_processor("later", tracking);
  engine.start();
  std::this_thread::sleep_for(50ms);  // idle: the dispatcher sleeps
  JobSpec s = spec("later");
  s.delay_ms = 300;
  const auto enqueued_at = std::chrono::steady_clock::now();
  const Job j = engine.enqueue(s);
  EXPECT_EQ(wait_final(engine, j.id).status, Status::completed);
  const auto late = tracking->starts().at(0) - enqueued_at;
  EXPECT_GE(late, 295ms);
  EXPECT_LT(late, 1'500ms);  // generous: a loaded machine; the poll would be 5 s
  engine.stop();
}

TEST_P(WorkflowTest, ScheduleFiresExactlyOncePerFireAcrossTwoEngines) {
  Engine a(config_for(dir)), b(config_for(dir));
  auto tracking = std::make_shared<Tracking>();
  a.register_processor("tick", tracking);
  b.register_processor("tick", tracking);
  Schedule sc;
  sc.name = "ticker";
  sc.cron = "@every 1s";
  sc.type = "tick";
  sc.payload_json = R"({"from": "schedule"})";
  sc.priority = 10;
  const Schedule stored = a.schedule(sc);
  EXPECT_GT(stored.next_fire_at, now_ms());
  a.start();
  b.start();
  std::this_thread::sleep_for(3'500ms);
  a.stop();
  b.stop();
  JobQuery q;
  q.type = "tick";
  const auto jobs = a.jobs(q);
  EXPECT_GE(jobs.size(), 2u);
  EXPECT_LE(jobs.size(), 4u);
  // Fire times are whole seconds apart: no two jobs for one fire.
  std::set<int64_t> seconds;
  for (const auto& j : jobs) seconds.insert(j.created_at / 1000);
  EXPECT_EQ(seconds.size(), jobs.size());
  EXPECT_EQ(jobs[0].priority, 10);
  EXPECT_EQ(a.schedules().size(), 1u);
  EXPECT_TRUE(a.unschedule("ticker"));
  EXPECT_TRUE(b.schedules().empty());
}

TEST_P(WorkflowTest, AMissedFireRunsOnceOrIsSkippedByPolicy) {
  Engine engine(config_for(dir));
  engine.register_processor("tick", std::make_shared<Tracking>());
  for (const char* policy : {"run_once", "skip"}) {
    Schedule sc;
    sc.name = policy;
    sc.cron = "*/5 * * * *";
    sc.type = "tick";
    sc.misfire = policy;
    engine.schedule(sc);
  }
  dir.db().exec("UPDATE schedules SET next_fire_at = next_fire_at - 86400000");  // a day missed
  EXPECT_EQ(engine.fire_due_schedules(), 1);  // run_once: one job, not 288
  EXPECT_EQ(engine.fire_due_schedules(), 0);
  EXPECT_EQ(engine.stats().total, 1);
  for (const auto& sc : engine.schedules()) EXPECT_GT(sc.next_fire_at, now_ms());
}

TEST_P(WorkflowTest, BadSchedulesAreValidationErrors) {
  Engine engine(config_for(dir));
  Schedule sc;
  sc.name = "x";
  sc.cron = "61 * * * *";
  sc.type = "noop";
  EXPECT_THROW(engine.schedule(sc), ValidationError);
  sc.cron = "@daily";
  sc.timezone = "Mars/Base";
  EXPECT_THROW(engine.schedule(sc), ValidationError);
  sc.timezone = "UTC";
  sc.type = "no_such_type";
  EXPECT_THROW(engine.schedule(sc), UnknownJobType);
  sc.type = "noop";
  sc.misfire = "sometimes";
  EXPECT_THROW(engine.schedule(sc), ValidationError);
  EXPECT_TRUE(engine.schedules().empty());
}

// ---- retention --------------------------------------------------------------------------------

TEST_P(WorkflowTest, CleanupDeletesOldFinishedJobsInBatchesAndKeepsTheRest) {
  auto cfg = config_for(dir);
  cfg.cleanup_batch = 7;
  Engine engine(cfg);
  std::vector<JobSpec> specs(50, spec("noop"));
  const auto jobs = engine.enqueue_many(specs);
  engine.start();
  for (const auto& j : jobs) wait_final(engine, j.id);
  engine.stop();
  const Job queued = engine.enqueue(spec("noop"));
  dir.db().exec(
      "UPDATE jobs SET created_at = created_at - 7200000, completed_at = completed_at - 7200000 "
      "WHERE status = 'completed'");
  EXPECT_EQ(engine.cleanup(3'600'000), 50);
  EXPECT_EQ(engine.stats().total, 1);
  EXPECT_TRUE(engine.get(queued.id).has_value());
  EXPECT_EQ(engine.cleanup(3'600'000), 0);
}

TEST_P(WorkflowTest, RetentionSchedulesTheCleanupJobAtLowestPriority) {
  auto cfg = config_for(dir);
  cfg.retention_ms = 1'000;
  cfg.cleanup_interval_ms = 1'000;
  Engine engine(cfg);
  EXPECT_TRUE(engine.has_processor("cleanup"));
  const Job old = engine.enqueue(spec("noop"));
  engine.start();
  wait_final(engine, old.id);
  const auto schedules = engine.schedules();
  ASSERT_EQ(schedules.size(), 1u);
  EXPECT_EQ(schedules[0].type, "cleanup");
  // Within a few seconds the job is older than a second and a cleanup run deletes it.
  const auto deadline = std::chrono::steady_clock::now() + testing::kPatience;
  while (engine.get(old.id) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(engine.get(old.id).has_value());
  JobQuery q;
  q.type = "cleanup";
  const auto cleanups = engine.jobs(q);
  ASSERT_FALSE(cleanups.empty());
  EXPECT_EQ(cleanups.back().priority, priority::maintenance);
  engine.stop();
}

// ---- run_now ----------------------------------------------------------------------------------

TEST_P(WorkflowTest, RunNowRunsInTheCallersThreadWithoutARow) {
  EngineConfig cfg = config_for(dir);
  cfg.allow_exec = true;
  Engine engine(cfg);
  class ReportsThread final : public Processor {
   public:
    std::string run(Context& ctx, const std::string& payload) override {
      ctx.progress(1, 2, "half");
      if (payload == R"({"fail":true})") throw ProcessorFailure("it broke", "");
      thread = std::this_thread::get_id();
      return payload;
    }
    std::thread::id thread;
  };
  auto p = std::make_shared<ReportsThread>();
  engine.register_processor("resize", p);
  std::vector<double> seen;
  EXPECT_EQ(engine.run_now("resize", R"({"w":1})",
                           [&](double current, double total, const std::string&) {
                             seen.push_back(current / total);
                           }),
            R"({"w":1})");
  EXPECT_EQ(p->thread, std::this_thread::get_id());
  EXPECT_EQ(seen, std::vector<double>{0.5});
  EXPECT_THROW(engine.run_now("resize", R"({"fail":true})"), ProcessorFailure);
  EXPECT_THROW(engine.run_now("nope", "{}"), UnknownJobType);
  // A native processor's field rules apply before it runs, as at enqueue.
  EXPECT_THROW(engine.run_now("exec", R"({"argv":"ls -l"})"), ValidationError);
  EXPECT_EQ(engine.stats().total, 0);
}

INSTANTIATE_TEST_SUITE_P(Stores, WorkflowTest,
                         ::testing::Values(Backend::sqlite, Backend::postgres),
                         jobforge::testing::backend_name);

}  // namespace
}  // namespace jobforge
