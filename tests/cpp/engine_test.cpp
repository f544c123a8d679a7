// Engine: enqueue → dispatcher → workers → store → events, with native test processors, real
// SQLite files and real threads. Waits are generous and only guard against hangs.
#include "jobforge/engine.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "jobforge/errors.hpp"
#include "test_support.hpp"

using namespace jobforge;
using jobforge::testing::Backend;
using jobforge::testing::eventually;
using jobforge::testing::Gate;
using jobforge::testing::kPatience;
using jobforge::testing::TempDir;
using jobforge::testing::TestDb;
using namespace std::chrono_literals;

namespace {

// ---- test processors ----------------------------------------------------------------------

// Returns its payload as the result and remembers the order and threads of its calls.
class EchoProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string& payload) override {
    std::lock_guard lock(mutex);
    payloads.push_back(payload);
    ids.push_back(ctx.job_id());
    threads.insert(std::this_thread::get_id());
    return payload;
  }
  std::vector<std::string> seen_payloads() {
    std::lock_guard lock(mutex);
    return payloads;
  }
  size_t calls() {
    std::lock_guard lock(mutex);
    return payloads.size();
  }
  std::mutex mutex;
  std::vector<std::string> payloads, ids;
  std::set<std::thread::id> threads;
};

// Throws on its first `failures` attempts of each job, then succeeds.
class FlakyProcessor final : public Processor {
 public:
  explicit FlakyProcessor(int failures) : failures_(failures) {}
  std::string run(Context& ctx, const std::string&) override {
    ++calls;
    if (ctx.attempt() <= failures_)
      throw std::runtime_error("boom on attempt " + std::to_string(ctx.attempt()));
    return "\"recovered\"";
  }
  std::atomic<int> calls{0};

 private:
  int failures_;
};

// Throws on its very first call, whatever the job, and succeeds afterwards.
class FailsFirstCallProcessor final : public Processor {
 public:
  std::string run(Context&, const std::string&) override {
    if (calls++ == 0) throw std::runtime_error("first call fails");
    return "null";
  }
  std::atomic<int> calls{0};
};

// Fails with a ProcessorFailure the engine must not retry.
class RejectingProcessor final : public Processor {
 public:
  std::string run(Context&, const std::string&) override {
    ++calls;
    throw ProcessorFailure("payload is unusable", "Traceback: line 1", /*permanent=*/true);
  }
  std::atomic<int> calls{0};
};

// Runs until the engine asks it to stop (cancel, timeout, shutdown), then either returns or
// throws JobCancelled through check_cancelled. Gives up after kPatience so a bug cannot hang.
class RunsUntilStopped final : public Processor {
 public:
  explicit RunsUntilStopped(bool throw_when_stopped = true) : throw_(throw_when_stopped) {}
  std::string run(Context& ctx, const std::string&) override {
    ++runs;
    worker_thread_seen = true;
    started.open();
    const auto give_up = std::chrono::steady_clock::now() + kPatience;
    while (!ctx.cancelled() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
    last_reason = ctx.stop_reason();
    if (throw_) ctx.check_cancelled();
    return "\"stopped\"";
  }
  Gate started;
  std::atomic<int> runs{0};
  std::atomic<bool> worker_thread_seen{false};
  std::atomic<StopReason> last_reason{StopReason::none};

 private:
  bool throw_;
};

// Tells the test it started, then works for a while without looking at cancellation.
class SlowProcessor final : public Processor {
 public:
  explicit SlowProcessor(std::chrono::milliseconds duration) : duration_(duration) {}
  std::string run(Context&, const std::string&) override {
    started.open();
    std::this_thread::sleep_for(duration_);
    return "\"finished\"";
  }
  Gate started;

 private:
  std::chrono::milliseconds duration_;
};

// Reports progress a few times, then returns.
class ProgressProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    thread = std::this_thread::get_id();
    ctx.progress(1, 4, "first");
    ctx.progress(2, 4);
    ctx.progress(3, 4);
    return "{\"done\":true}";
  }
  std::atomic<std::thread::id> thread{};
};

// Reports progress, then waits for the test to let it finish.
class HoldsProgressProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    ctx.progress(40, 100, "working");
    reported.open();
    release.wait();
    return "null";
  }
  Gate reported, release;
};

class RecordsCallsProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    std::lock_guard lock(mutex);
    ++count_by_id[ctx.job_id()];
    return "null";
  }
  std::mutex mutex;
  std::map<std::string, int> count_by_id;
};

// ---- helpers ------------------------------------------------------------------------------

EngineConfig small_config(const TempDir& dir, int workers);

// JSON texts equal as values: PostgreSQL's JSONB normalizes what it stores (spacing, key order),
// as docs/postgresql.md says.
bool same_json(const std::optional<std::string>& a, const std::string& b) {
  return a && nlohmann::json::parse(*a) == nlohmann::json::parse(b);
}

// Where an engine test's database lives (created on first use): a file in a temporary folder, or
// a fresh PostgreSQL schema. file(name) is a path (SQLite) or the schema's URL (PostgreSQL).
class TestLocation {
 public:
  explicit TestLocation(std::function<Backend()> backend) : backend_(std::move(backend)) {}
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

EngineConfig small_config(const TestLocation& dir, int workers = 2) {
  EngineConfig c = small_config(dir.db().dir(), workers);
  c.path = dir.file("jobs.db");
  return c;
}

EngineConfig small_config(const TempDir& dir, int workers) {
  EngineConfig c;
  c.path = dir.file("jobs.db");
  c.workers = workers;
  c.poll_ms = 20;
  c.heartbeat_ms = 50;
  c.lease_ms = 10'000;
  c.progress_flush_ms = 50;
  c.progress_event_ms = 0;  // every progress update becomes an event
  c.default_retry_delay_ms = 5;
  c.default_timeout_ms = 60'000;
  return c;
}

JobSpec spec(const std::string& type, std::string payload = "null") {
  JobSpec s;
  s.type = type;
  s.payload_json = std::move(payload);
  return s;
}

Job wait_final(Engine& engine, const std::string& id) {
  auto job = engine.wait(id, kPatience);
  if (!job) {
    ADD_FAILURE() << "job " << id << " did not finish";
    return Job{};
  }
  return *job;
}

// The sleep processor is inside run() once it has reported some seconds slept (a job that is
// "running" in the store may still wait in the ready queue).
bool sleep_has_begun(Engine& engine, const std::string& id) {
  return eventually([&] {
    auto job = engine.get(id);
    return job && job->status == Status::running && job->progress_current > 0;
  });
}

// Collects the events of an engine's bus, with the thread each batch arrived on.
struct EventLog {
  explicit EventLog(Engine& engine) : bus(engine.events()) {
    id = bus.subscribe([this](const std::vector<Event>& batch) {
      std::lock_guard lock(mutex);
      for (const auto& e : batch) events.push_back(e);
      delivery_threads.insert(std::this_thread::get_id());
      if (!bus.on_delivery_thread()) off_delivery_thread = true;
    });
  }
  ~EventLog() { bus.unsubscribe(id); }

  // Events about one job, once everything committed so far has been published and delivered.
  std::vector<Event> for_job(Engine& engine, const std::string& job_id) {
    engine.store().flush();
    bus.flush();
    std::lock_guard lock(mutex);
    std::vector<Event> out;
    for (const auto& e : events)
      if (e.job_id == job_id) out.push_back(e);
    return out;
  }
  int count(EventType type) {
    std::lock_guard lock(mutex);
    return static_cast<int>(std::count_if(events.begin(), events.end(),
                                          [&](const Event& e) { return e.type == type; }));
  }

  EventBus& bus;
  SubscriptionId id;
  std::mutex mutex;
  std::vector<Event> events;
  std::set<std::thread::id> delivery_threads;
  bool off_delivery_thread = false;
};

std::vector<EventType> types_of(const std::vector<Event>& events) {
  std::vector<EventType> out;
  for (const auto& e : events) out.push_back(e.type);
  return out;
}

// One behaviour suite, two stores: every TEST_P runs on a SQLite file and on a fresh PostgreSQL
// schema; TEST_F(SqliteEngineTest, ...) covers what only SQLite has (claims in memory, files).
class EngineTest : public ::testing::TestWithParam<Backend> {
 protected:
  virtual Backend backend() const { return GetParam(); }
  TestLocation dir{[this] { return backend(); }};
};

class SqliteEngineTest : public EngineTest {
 protected:
  Backend backend() const override { return Backend::sqlite; }
};

}  // namespace

// ---- the common path ----------------------------------------------------------------------

TEST_P(EngineTest, EnqueuedJobRunsAndWaitReturnsItCompleted) {
  Engine engine(small_config(dir));
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("echo", echo);
  engine.start();
  const Job queued = engine.enqueue(spec("echo", R"({"x":[1,2,3]})"));
  EXPECT_EQ(queued.status, Status::queued);
  EXPECT_EQ(queued.id.size(), 36u);

  const Job done = wait_final(engine, queued.id);
  EXPECT_EQ(done.status, Status::completed);
  EXPECT_TRUE(same_json(done.result_json, R"({"x":[1,2,3]})")) << *done.result_json;
  EXPECT_EQ(done.attempts, 1);
  EXPECT_EQ(done.progress, 100);
  EXPECT_GE(done.started_at, done.created_at);
  EXPECT_GE(done.completed_at, done.started_at);
  EXPECT_FALSE(done.error.has_value());
  ASSERT_EQ(echo->seen_payloads().size(), 1u);
  EXPECT_TRUE(same_json(echo->seen_payloads()[0], R"({"x":[1,2,3]})"));

  const Stats s = engine.stats();
  EXPECT_EQ(s.total, 1);
  EXPECT_EQ(s.count(Status::completed), 1);
}

TEST_P(EngineTest, EnqueueIsDurableBeforeStartAndJobsRunOnceStarted) {
  Engine engine(small_config(dir));
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("echo", echo);
  const Job job = engine.enqueue(spec("echo", "1"));
  EXPECT_FALSE(engine.running());
  auto stored = engine.get(job.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->status, Status::queued);
  EXPECT_FALSE(engine.wait(job.id, 30ms).has_value());  // nothing runs it yet
  EXPECT_EQ(echo->calls(), 0u);

  engine.start();
  EXPECT_TRUE(engine.running());
  EXPECT_EQ(wait_final(engine, job.id).status, Status::completed);
  engine.stop();
  EXPECT_FALSE(engine.running());
}

TEST_P(EngineTest, WaitOnAnUnknownIdIsAValidationError) {
  Engine engine(small_config(dir));
  EXPECT_THROW(engine.wait("00000000-0000-7000-8000-000000000000", 10ms), ValidationError);
}

TEST_P(EngineTest, ExecIsRegisteredOnlyWhenAllowed) {
  Engine engine(small_config(dir));
  EXPECT_FALSE(engine.has_processor("exec"));
  try {
    engine.enqueue(spec("exec", R"({"argv":["true"]})"));
    FAIL() << "exec was enqueued by an engine that does not allow it";
  } catch (const UnknownJobType& e) {
    EXPECT_NE(std::string(e.what()).find("allow_exec"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.stats().total, 0);
  EngineConfig allowed = small_config(dir);
  allowed.allow_exec = true;
  Engine with_exec(allowed);
  EXPECT_TRUE(with_exec.has_processor("exec"));
}

TEST_P(EngineTest, BuiltinProcessorsAreRegistered) {
  Engine engine(small_config(dir));
  EXPECT_TRUE(engine.has_processor("noop"));
  EXPECT_TRUE(engine.has_processor("sleep"));
  EXPECT_FALSE(engine.has_processor("echo"));
  engine.start();
  const Job noop = engine.enqueue(spec("noop"));
  const Job nap = engine.enqueue(spec("sleep", R"({"seconds":0.02})"));
  EXPECT_EQ(wait_final(engine, noop.id).result_json, std::optional<std::string>("null"));
  const Job slept = wait_final(engine, nap.id);
  EXPECT_EQ(slept.status, Status::completed);
  EXPECT_TRUE(same_json(slept.result_json, R"({"slept":0.02})"));
}

TEST_P(EngineTest, ProcessorRegisteredAfterStartPicksUpWaitingJobs) {
  EngineConfig config = small_config(dir);
  config.allow_unknown_types = true;
  Engine engine(config);
  engine.start();
  const Job job = engine.enqueue(spec("late"));
  EXPECT_FALSE(engine.wait(job.id, 50ms).has_value());
  engine.register_processor("late", std::make_shared<EchoProcessor>());
  EXPECT_EQ(wait_final(engine, job.id).status, Status::completed);
}

TEST_P(EngineTest, ProcessorDefaultsApplyAndJobOptionsOverrideThem) {
  Engine engine(small_config(dir));
  ProcessorOptions defaults;
  defaults.priority = priority::low;
  defaults.max_attempts = 7;
  defaults.timeout_ms = 1234;
  defaults.retry_delay_ms = 55;
  engine.register_processor("echo", std::make_shared<EchoProcessor>(), defaults);
  const Job from_defaults = engine.enqueue(spec("echo"));
  EXPECT_EQ(from_defaults.priority, priority::low);
  EXPECT_EQ(from_defaults.max_attempts, 7);
  EXPECT_EQ(from_defaults.timeout_ms, 1234);
  EXPECT_EQ(from_defaults.retry_delay_ms, 55);

  JobSpec own = spec("echo");
  own.priority = priority::urgent;
  own.max_attempts = 1;
  own.timeout_ms = 999;
  own.retry_delay_ms = 0;
  const Job overridden = engine.enqueue(own);
  auto stored = engine.get(overridden.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->priority, priority::urgent);
  EXPECT_EQ(stored->max_attempts, 1);
  EXPECT_EQ(stored->timeout_ms, 999);
  EXPECT_EQ(stored->retry_delay_ms, 0);

  const Job engine_defaults = engine.enqueue(spec("noop"));
  EXPECT_EQ(engine_defaults.priority, engine.config().default_priority);
  EXPECT_EQ(engine_defaults.max_attempts, engine.config().default_max_attempts);
}

// docs/workers.md: a producer that never registered a type enqueues with the options a worker
// published for it; the newest publish of a live worker wins; nobody's type is refused.
TEST_P(EngineTest, ProducerWithoutTheProcessorEnqueuesWithTheOptionsAWorkerPublished) {
  Engine worker(small_config(dir));
  ProcessorOptions options;
  options.max_attempts = 2;
  options.timeout_ms = 30'000;
  options.priority = priority::high;
  options.retry_delay_ms = 70;
  worker.register_processor("resize", std::make_shared<EchoProcessor>(), options);
  Engine producer(small_config(dir));  // never registers resize, never starts
  EXPECT_THROW(producer.enqueue(spec("resize")), UnknownJobType);  // nobody publishes it yet
  worker.start();

  const Job published = producer.enqueue(spec("resize"));  // a miss re-reads the table
  EXPECT_EQ(published.max_attempts, 2);
  EXPECT_EQ(published.timeout_ms, 30'000);
  EXPECT_EQ(published.priority, priority::high);
  EXPECT_EQ(published.retry_delay_ms, 70);
  auto stored = producer.get(published.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->max_attempts, 2);
  JobSpec own = spec("resize");
  own.max_attempts = 4;
  EXPECT_EQ(producer.enqueue(own).max_attempts, 4);  // a job's own options still override

  try {
    producer.enqueue(spec("nobody-serves"));
    ADD_FAILURE() << "a type nobody publishes was accepted";
  } catch (const UnknownJobType& e) {
    EXPECT_NE(std::string(e.what()).find("no worker publishes it"), std::string::npos) << e.what();
  }
  EngineConfig lenient_config = small_config(dir);
  lenient_config.allow_unknown_types = true;
  Engine lenient(lenient_config);
  EXPECT_EQ(lenient.enqueue(spec("nobody-serves")).max_attempts,
            lenient_config.default_max_attempts);
  EXPECT_EQ(lenient.enqueue(spec("resize")).max_attempts, 2);

  // A second live worker publishing other options later: the newest publish wins.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Engine worker2(small_config(dir));
  ProcessorOptions other;
  other.max_attempts = 5;
  worker2.register_processor("resize", std::make_shared<EchoProcessor>(), other);
  worker2.start();
  EXPECT_EQ(Engine(small_config(dir)).enqueue(spec("resize")).max_attempts, 5);
  EXPECT_EQ(Engine(small_config(dir)).enqueue(spec("resize")).timeout_ms,
            small_config(dir).default_timeout_ms);  // worker2 set no timeout
  // It stops: the live worker's entry wins again.
  worker2.stop();
  EXPECT_EQ(Engine(small_config(dir)).enqueue(spec("resize")).max_attempts, 2);
  // Nobody live: the type stays known with the entry of the worker that served it last (jobs
  // wait for a worker).
  worker.stop();
  EXPECT_EQ(Engine(small_config(dir)).enqueue(spec("resize")).max_attempts, 2);
}

TEST_P(EngineTest, OneWorkerRunsQueuedJobsInPriorityOrder) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("echo", echo);
  // (label, priority), enqueued in this order before the engine starts.
  const std::vector<std::pair<std::string, int>> jobs = {
      {"n1", 5}, {"m1", 10}, {"u1", 1}, {"h1", 3},  {"n2", 5},
      {"l1", 7}, {"u2", 1},  {"h2", 3}, {"m2", 10}, {"n3", 5},
  };
  std::vector<std::string> ids;
  for (const auto& [label, prio] : jobs) {
    JobSpec s = spec("echo", "\"" + label + "\"");
    s.priority = prio;
    ids.push_back(engine.enqueue(s).id);
  }
  engine.start();
  for (const auto& id : ids) wait_final(engine, id);
  EXPECT_EQ(echo->seen_payloads(),
            (std::vector<std::string>{"\"u1\"", "\"u2\"", "\"h1\"", "\"h2\"", "\"n1\"", "\"n2\"",
                                      "\"n3\"", "\"l1\"", "\"m1\"", "\"m2\""}));
}

TEST_P(EngineTest, EnqueueManyKeepsInsertionOrderWithinAPriority) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("echo", echo);
  std::vector<JobSpec> specs;
  std::vector<std::string> expected;
  for (int i = 0; i < 20; ++i) {
    specs.push_back(spec("echo", std::to_string(i)));
    expected.push_back(std::to_string(i));
  }
  const auto queued = engine.enqueue_many(specs);
  ASSERT_EQ(queued.size(), 20u);
  engine.start();
  for (const auto& j : queued) wait_final(engine, j.id);
  EXPECT_EQ(echo->seen_payloads(), expected);
}

TEST_P(EngineTest, DelayedJobDoesNotStartBeforeItIsDue) {
  Engine engine(small_config(dir));
  engine.register_processor("echo", std::make_shared<EchoProcessor>());
  engine.start();
  JobSpec s = spec("echo");
  s.delay_ms = 150;
  const Job job = engine.enqueue(s);
  EXPECT_EQ(job.run_at, job.created_at + 150);
  const Job done = wait_final(engine, job.id);
  EXPECT_EQ(done.status, Status::completed);
  EXPECT_GE(done.started_at, job.run_at);
}

// ---- failures and retries -----------------------------------------------------------------

TEST_P(EngineTest, FailingJobIsRetriedThenFailsWithTheLastError) {
  Engine engine(small_config(dir));
  auto flaky = std::make_shared<FlakyProcessor>(/*failures=*/100);
  engine.register_processor("flaky", flaky);
  EventLog log(engine);
  engine.start();
  JobSpec s = spec("flaky");
  s.max_attempts = 3;
  s.retry_delay_ms = 5;
  const Job job = engine.enqueue(s);
  const Job failed = wait_final(engine, job.id);
  EXPECT_EQ(failed.status, Status::failed);
  EXPECT_EQ(failed.attempts, 3);
  EXPECT_EQ(failed.error, std::optional<std::string>("boom on attempt 3"));
  EXPECT_EQ(flaky->calls.load(), 3);

  const auto events = log.for_job(engine, job.id);
  const auto retries = std::count_if(events.begin(), events.end(),
                                     [](const Event& e) { return e.type == EventType::retry; });
  EXPECT_EQ(retries, 2);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().type, EventType::failed);
  EXPECT_EQ(events.back().error, std::optional<std::string>("boom on attempt 3"));
  EXPECT_EQ(events.back().attempt, 3);
}

TEST_P(EngineTest, JobThatFailsTwiceSucceedsOnTheThirdAttempt) {
  Engine engine(small_config(dir));
  auto flaky = std::make_shared<FlakyProcessor>(/*failures=*/2);
  engine.register_processor("flaky", flaky);
  engine.start();
  JobSpec s = spec("flaky");
  s.max_attempts = 3;
  const Job done = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(done.status, Status::completed);
  EXPECT_EQ(done.attempts, 3);
  EXPECT_EQ(done.result_json, std::optional<std::string>("\"recovered\""));
}

TEST_P(EngineTest, PermanentProcessorFailureIsNotRetried) {
  Engine engine(small_config(dir));
  auto rejecting = std::make_shared<RejectingProcessor>();
  engine.register_processor("reject", rejecting);
  engine.start();
  JobSpec s = spec("reject");
  s.max_attempts = 5;
  const Job failed = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(failed.status, Status::failed);
  EXPECT_EQ(failed.attempts, 1);
  EXPECT_EQ(failed.error, std::optional<std::string>("payload is unusable"));
  EXPECT_EQ(failed.error_detail, std::optional<std::string>("Traceback: line 1"));
  EXPECT_EQ(rejecting->calls.load(), 1);
}

TEST_P(EngineTest, ManualRetryRunsAFailedJobAgainWithFreshAttempts) {
  Engine engine(small_config(dir));
  auto fails_once = std::make_shared<FailsFirstCallProcessor>();
  engine.register_processor("fails-once", fails_once);
  engine.start();
  JobSpec s = spec("fails-once");
  s.max_attempts = 1;
  const Job job = engine.enqueue(s);
  const Job failed = wait_final(engine, job.id);
  ASSERT_EQ(failed.status, Status::failed);
  EXPECT_EQ(failed.error, std::optional<std::string>("first call fails"));
  EXPECT_TRUE(engine.retry(job.id));
  const Job again = wait_final(engine, job.id);
  EXPECT_EQ(again.status, Status::completed);
  EXPECT_EQ(again.attempts, 1);
  EXPECT_FALSE(again.error.has_value());
  EXPECT_EQ(fails_once->calls.load(), 2);
  EXPECT_FALSE(engine.retry(job.id));  // completed jobs are not retried
  EXPECT_FALSE(engine.retry("00000000-0000-7000-8000-000000000000"));
}

// ---- timeouts -----------------------------------------------------------------------------

TEST_P(EngineTest, TimedOutJobEndsAsTimeoutAndTheWorkerIsFreeAfterwards) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto stuck = std::make_shared<RunsUntilStopped>(/*throw_when_stopped=*/false);
  engine.register_processor("stuck", stuck);
  engine.start();
  JobSpec s = spec("stuck");
  s.timeout_ms = 100;
  s.max_attempts = 3;  // a timeout is final: not retried
  const Job timed_out = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(timed_out.status, Status::timeout);
  EXPECT_EQ(timed_out.attempts, 1);
  ASSERT_TRUE(timed_out.error.has_value());
  EXPECT_NE(timed_out.error->find("timed out"), std::string::npos) << *timed_out.error;
  EXPECT_EQ(stuck->last_reason.load(), StopReason::timeout);
  EXPECT_EQ(stuck->runs.load(), 1);

  const Job next = wait_final(engine, engine.enqueue(spec("noop")).id);
  EXPECT_EQ(next.status, Status::completed);
}

TEST_P(EngineTest, ProcessorThatThrowsOnTimeoutAlsoEndsAsTimeout) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto stuck = std::make_shared<RunsUntilStopped>(/*throw_when_stopped=*/true);
  engine.register_processor("stuck", stuck);
  engine.start();
  JobSpec s = spec("stuck");
  s.timeout_ms = 50;
  const Job timed_out = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(timed_out.status, Status::timeout);
}

// The deadline of a job that starts while the engine's periodic work sleeps must still be
// watched. Here every periodic interval (poll, heartbeat, progress flush) is a minute, so only a
// deadline watched from the job's start can end it near its 50 ms timeout.
TEST_P(EngineTest, TimeoutIsEnforcedEvenWhenThePeriodicIntervalsAreLong) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.poll_ms = 60'000;
  config.heartbeat_ms = 60'000;
  config.progress_flush_ms = 60'000;
  Engine engine(config);
  auto stuck = std::make_shared<RunsUntilStopped>(/*throw_when_stopped=*/false);
  engine.register_processor("stuck", stuck);
  engine.start();
  std::this_thread::sleep_for(100ms);  // let maintenance go to sleep with nothing to watch
  JobSpec s = spec("stuck");
  s.timeout_ms = 50;
  const Job job = engine.enqueue(s);
  auto ended = engine.wait(job.id, 3'000ms);  // 60x the timeout
  if (!ended) {
    ADD_FAILURE() << "a job with a 50 ms timeout was still running 3 s later";
    engine.cancel(job.id);  // free the worker so the engine can stop
    ended = engine.wait(job.id, kPatience);
  } else {
    EXPECT_EQ(ended->status, Status::timeout);
  }
}

// ---- cancel -------------------------------------------------------------------------------

TEST_P(EngineTest, CancelOfAQueuedJobMeansItNeverRuns) {
  Engine engine(small_config(dir));
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("echo", echo);
  const Job job = engine.enqueue(spec("echo"));
  EXPECT_TRUE(engine.cancel(job.id));
  EXPECT_FALSE(engine.cancel(job.id));  // already final
  EXPECT_FALSE(engine.cancel("00000000-0000-7000-8000-000000000000"));
  engine.start();
  const Job marker = engine.enqueue(spec("echo"));
  wait_final(engine, marker.id);
  const Job cancelled = wait_final(engine, job.id);
  EXPECT_EQ(cancelled.status, Status::cancelled);
  EXPECT_EQ(echo->calls(), 1u);  // only the marker ran
}

TEST_P(EngineTest, CancelOfADelayedJobInARunningEngine) {
  Engine engine(small_config(dir));
  engine.start();
  JobSpec s = spec("noop");
  s.delay_ms = 60'000;
  const Job job = engine.enqueue(s);
  EXPECT_TRUE(engine.cancel(job.id));
  EXPECT_EQ(wait_final(engine, job.id).status, Status::cancelled);
}

TEST_P(EngineTest, CancelOfARunningJobStopsItAsCancelled) {
  Engine engine(small_config(dir));
  auto stuck = std::make_shared<RunsUntilStopped>();
  engine.register_processor("stuck", stuck);
  EventLog log(engine);
  engine.start();
  const Job job = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  EXPECT_TRUE(engine.cancel(job.id));
  const Job cancelled = wait_final(engine, job.id);
  EXPECT_EQ(cancelled.status, Status::cancelled);
  EXPECT_EQ(cancelled.attempts, 1);
  EXPECT_EQ(stuck->last_reason.load(), StopReason::cancelled);
  EXPECT_FALSE(engine.cancel(job.id));
  const auto events = log.for_job(engine, job.id);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().type, EventType::cancelled);
}

TEST_P(EngineTest, ConcurrentCancelsOfTheSameRunningJobEndItOnce) {
  Engine engine(small_config(dir));
  auto stuck = std::make_shared<RunsUntilStopped>();
  engine.register_processor("stuck", stuck);
  EventLog log(engine);
  engine.start();
  const Job job = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());

  constexpr int kThreads = 6;
  std::atomic<int> ready{0}, accepted{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      ++ready;
      while (!go.load()) std::this_thread::yield();
      if (engine.cancel(job.id)) ++accepted;
    });
  }
  while (ready.load() < kThreads) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_GE(accepted.load(), 1);

  const Job cancelled = wait_final(engine, job.id);
  EXPECT_EQ(cancelled.status, Status::cancelled);
  EXPECT_EQ(stuck->runs.load(), 1);
  const auto events = log.for_job(engine, job.id);
  EXPECT_EQ(std::count_if(events.begin(), events.end(),
                          [](const Event& e) { return e.type == EventType::cancelled; }),
            1);
  const Stats s = engine.stats();
  EXPECT_EQ(s.total, 1);
  EXPECT_EQ(s.count(Status::cancelled), 1);
  EXPECT_EQ(s.count(Status::running), 0);
}

// With prefetch, a job can be claimed durably (running in the store, holding a lease) and wait
// for a worker; cancelled there, it never ran, so it must not use an attempt.
TEST_P(EngineTest, JobCancelledWhileWaitingForAWorkerUsesNoAttempt) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.prefetch = 1;
  config.claim_in_memory = false;  // so that "claimed" shows in the store as 'running'
  Engine engine(config);
  auto stuck = std::make_shared<RunsUntilStopped>();
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("stuck", stuck);
  engine.register_processor("echo", echo);
  engine.start();
  const Job busy = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  const Job waiting = engine.enqueue(spec("echo"));
  ASSERT_TRUE(
      eventually([&] { return engine.store().get(waiting.id)->status == Status::running; }));
  // The claim is committed before the dispatcher hands the job to the ready queue; let it get
  // there (a cancel inside that window is the subject of JobCancelledJustAfterItsClaimNeverRuns).
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(engine.cancel(waiting.id));
  EXPECT_TRUE(engine.cancel(busy.id));  // frees the worker
  const Job cancelled = wait_final(engine, waiting.id);
  EXPECT_EQ(cancelled.status, Status::cancelled);
  EXPECT_EQ(cancelled.attempts, 0);
  EXPECT_EQ(wait_final(engine, busy.id).attempts, 1);
  EXPECT_EQ(echo->calls(), 0u);
}

// A durable claim is committed (the job shows 'running') a moment before the dispatcher puts the
// job in its ready queue. cancel() returning true in that moment must still keep the job from
// running when a worker frees up. The window is narrow, so the scenario is repeated.
TEST_P(EngineTest, JobCancelledJustAfterItsClaimNeverRuns) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.prefetch = 1;
  config.claim_in_memory = false;
  Engine engine(config);
  auto blocker = std::make_shared<RunsUntilStopped>();
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("blocker", blocker);
  engine.register_processor("echo", echo);
  engine.start();
  int ran_after_cancel = 0;
  for (int round = 0; round < 30; ++round) {
    const Job busy = engine.enqueue(spec("blocker"));
    ASSERT_TRUE(eventually([&] { return blocker->runs.load() == round + 1; }));
    const Job victim = engine.enqueue(spec("echo"));
    const auto deadline = std::chrono::steady_clock::now() + kPatience;
    while (engine.store().get(victim.id)->status != Status::running &&
           std::chrono::steady_clock::now() < deadline) {
    }
    const size_t calls_before = echo->calls();
    EXPECT_TRUE(engine.cancel(victim.id));
    EXPECT_TRUE(engine.cancel(busy.id));  // the worker is free for the victim at once
    wait_final(engine, busy.id);
    const Job ended = wait_final(engine, victim.id);
    if (ended.status != Status::cancelled || echo->calls() != calls_before) ++ran_after_cancel;
  }
  EXPECT_EQ(ran_after_cancel, 0) << "jobs ran although cancel() had returned true";
}

namespace {

// cancel() returning true for a job that this engine holds but has not started (prefetched, or
// claimed in memory) should end it then, not when a worker happens to become free, which may be
// hours later.
void expect_cancel_of_a_held_job_ends_it_at_once(Engine& engine, bool claims_show_in_store) {
  auto stuck = std::make_shared<RunsUntilStopped>();
  auto echo = std::make_shared<EchoProcessor>();
  engine.register_processor("stuck", stuck);
  engine.register_processor("echo", echo);
  engine.start();
  const Job busy = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  const Job waiting = engine.enqueue(spec("echo"));
  if (claims_show_in_store) {
    ASSERT_TRUE(
        eventually([&] { return engine.store().get(waiting.id)->status == Status::running; }));
  } else {
    std::this_thread::sleep_for(200ms);  // a claim in memory cannot be seen: give it time
  }
  EXPECT_TRUE(engine.cancel(waiting.id));
  const auto ended = engine.wait(waiting.id, 3'000ms);
  EXPECT_TRUE(ended.has_value())
      << "the cancelled job was still '" << to_string(engine.get(waiting.id)->status)
      << "' 3 s after cancel() returned true, because the only worker is busy";
  if (ended) {
    EXPECT_EQ(ended->status, Status::cancelled);
  }
  EXPECT_TRUE(engine.cancel(busy.id));
  EXPECT_EQ(wait_final(engine, waiting.id).status, Status::cancelled);
  EXPECT_EQ(echo->calls(), 0u);
}

}  // namespace

TEST_P(EngineTest, PrefetchedJobCancelledEndsWithoutWaitingForABusyWorker) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.prefetch = 1;
  config.claim_in_memory = false;
  Engine engine(config);
  expect_cancel_of_a_held_job_ends_it_at_once(engine, /*claims_show_in_store=*/true);
}

TEST_F(SqliteEngineTest, JobClaimedInMemoryCancelledEndsWithoutWaitingForABusyWorker) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.claim_in_memory = true;
  Engine engine(config);
  expect_cancel_of_a_held_job_ends_it_at_once(engine, /*claims_show_in_store=*/false);
}

// An admin's `jobforge cancel` runs in another process that does not work jobs, so the worker
// process stays alone on the file and may hold the job in memory. The cancelled job must not run.
TEST_F(SqliteEngineTest, JobCancelledByAProducerProcessNeverRunsEvenIfClaimedInMemory) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  Engine worker(config);
  auto stuck = std::make_shared<RunsUntilStopped>();
  auto echo = std::make_shared<EchoProcessor>();
  worker.register_processor("stuck", stuck);
  worker.register_processor("echo", echo);
  EngineConfig producer_config = small_config(dir);
  producer_config.allow_unknown_types = true;
  Engine producer(producer_config);  // never started: enqueues and cancels only
  worker.start();
  const Job busy = producer.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  std::vector<Job> victims;
  for (int i = 0; i < 3; ++i) victims.push_back(producer.enqueue(spec("echo", std::to_string(i))));
  std::this_thread::sleep_for(200ms);  // let the worker claim them, in memory if it does so
  for (const auto& v : victims) EXPECT_TRUE(producer.cancel(v.id));
  for (const auto& v : victims) {
    auto seen = producer.get(v.id);
    ASSERT_TRUE(seen.has_value());
    EXPECT_EQ(seen->status, Status::cancelled);
  }
  EXPECT_TRUE(producer.cancel(busy.id));
  EXPECT_EQ(wait_final(producer, busy.id).status, Status::cancelled);
  const Job marker = producer.enqueue(spec("echo", "\"marker\""));
  EXPECT_EQ(wait_final(producer, marker.id).status, Status::completed);
  EXPECT_EQ(echo->seen_payloads(), std::vector<std::string>{"\"marker\""})
      << "cancelled jobs were run";
  for (const auto& v : victims) EXPECT_EQ(wait_final(producer, v.id).status, Status::cancelled);
}

TEST_P(EngineTest, AbortAllCancelsQueuedAndRunningJobs) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto stuck = std::make_shared<RunsUntilStopped>();
  engine.register_processor("stuck", stuck);
  engine.start();
  const Job running = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  std::vector<Job> queued;
  for (int i = 0; i < 3; ++i) {
    JobSpec s = spec("noop");
    s.delay_ms = 60'000;  // stays queued: the only worker is busy anyway
    queued.push_back(engine.enqueue(s));
  }
  EXPECT_EQ(engine.abort_all(), 4);
  EXPECT_EQ(wait_final(engine, running.id).status, Status::cancelled);
  for (const auto& j : queued) EXPECT_EQ(wait_final(engine, j.id).status, Status::cancelled);
  EXPECT_EQ(engine.stats().count(Status::cancelled), 4);
  EXPECT_EQ(engine.abort_all(), 0);
}

TEST_P(EngineTest, BuiltinSleepHonoursCancel) {
  Engine engine(small_config(dir));
  engine.start();
  const Job job = engine.enqueue(spec("sleep", R"({"seconds":30})"));
  ASSERT_TRUE(sleep_has_begun(engine, job.id));
  EXPECT_TRUE(engine.cancel(job.id));
  const Job cancelled = wait_final(engine, job.id);
  EXPECT_EQ(cancelled.status, Status::cancelled);
  EXPECT_FALSE(cancelled.result_json.has_value());
}

TEST_P(EngineTest, BuiltinSleepRejectsABadPayloadPermanently) {
  Engine engine(small_config(dir));
  engine.start();
  JobSpec s = spec("sleep", R"({"seconds":"soon"})");
  s.max_attempts = 3;
  const Job failed = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(failed.status, Status::failed);
  EXPECT_EQ(failed.attempts, 1);
  ASSERT_TRUE(failed.error.has_value());
  EXPECT_NE(failed.error->find("seconds"), std::string::npos);
}

// ---- stop ---------------------------------------------------------------------------------

TEST_P(EngineTest, StopAndWaitLetsTheRunningJobFinish) {
  Engine engine(small_config(dir));
  auto slow = std::make_shared<SlowProcessor>(200ms);
  engine.register_processor("slow", slow);
  engine.start();
  const Job job = engine.enqueue(spec("slow"));
  ASSERT_TRUE(slow->started.wait());
  engine.stop(/*wait=*/true);
  auto after = engine.get(job.id);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->status, Status::completed);
  EXPECT_EQ(after->result_json, std::optional<std::string>("\"finished\""));
}

TEST_P(EngineTest, StopWithoutWaitingRequeuesTheRunningJobWithItsAttemptUnused) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto stuck = std::make_shared<RunsUntilStopped>();
  engine.register_processor("stuck", stuck);
  JobSpec s = spec("stuck");
  s.max_attempts = 1;
  const Job job = engine.enqueue(s);
  const Job waiting = engine.enqueue(spec("noop"));  // claimed or queued, never started
  engine.start();
  ASSERT_TRUE(stuck->started.wait());
  engine.stop(/*wait=*/false);
  EXPECT_EQ(stuck->last_reason.load(), StopReason::shutdown);

  auto requeued = engine.get(job.id);
  ASSERT_TRUE(requeued.has_value());
  EXPECT_EQ(requeued->status, Status::queued);
  EXPECT_EQ(requeued->attempts, 0);
  EXPECT_TRUE(requeued->lease_owner.empty());
  auto untouched = engine.get(waiting.id);
  ASSERT_TRUE(untouched.has_value());
  EXPECT_EQ(untouched->status, Status::queued);
  EXPECT_EQ(untouched->attempts, 0);
  const Stats s1 = engine.stats();
  EXPECT_EQ(s1.count(Status::queued), 2);
  EXPECT_EQ(s1.count(Status::running), 0);

  // Started again, the job gets its one attempt; this time it is cancelled rather than stopped.
  engine.start();
  ASSERT_TRUE(eventually([&] { return stuck->runs.load() == 2; }));
  EXPECT_TRUE(engine.cancel(job.id));
  const Job ended = wait_final(engine, job.id);
  EXPECT_EQ(ended.status, Status::cancelled);
  EXPECT_EQ(ended.attempts, 1);
  EXPECT_EQ(wait_final(engine, waiting.id).status, Status::completed);
}

// A processor that returns normally on seeing ctx.cancelled() may have cut its work short, so
// a hard stop puts its job back in the queue rather than recording a half-done completion.
TEST_P(EngineTest, StopWithoutWaitingRequeuesEvenAJobWhoseProcessorReturnedNormally) {
  Engine engine(small_config(dir, /*workers=*/1));
  auto stuck = std::make_shared<RunsUntilStopped>(/*throw_when_stopped=*/false);
  engine.register_processor("stuck", stuck);
  engine.start();
  const Job job = engine.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  engine.stop(/*wait=*/false);
  auto requeued = engine.get(job.id);
  ASSERT_TRUE(requeued.has_value());
  EXPECT_EQ(requeued->status, Status::queued);
  EXPECT_EQ(requeued->attempts, 0);
  EXPECT_FALSE(requeued->result_json.has_value());
}

TEST_P(EngineTest, EngineDestroyedWhileJobsRunDoesNotCrashOrHang) {
  const std::string path = dir.file("jobs.db");
  std::vector<std::string> ids;
  {
    Engine engine(small_config(dir, /*workers=*/2));
    engine.start();
    for (int i = 0; i < 6; ++i)
      ids.push_back(engine.enqueue(spec("sleep", R"({"seconds":0.1})")).id);
    ASSERT_TRUE(sleep_has_begun(engine, ids[0]));
  }  // ~Engine: stop(true), then close
  auto store = open_store(path);
  const Stats s = store->stats();
  EXPECT_EQ(s.total, 6);
  EXPECT_EQ(s.count(Status::running), 0);
  EXPECT_EQ(s.count(Status::completed) + s.count(Status::queued), 6);
  EXPECT_GE(s.count(Status::completed), 1);
  for (const auto& id : ids) {
    auto job = store->get(id);
    ASSERT_TRUE(job.has_value());
    if (job->status == Status::queued) {
      EXPECT_EQ(job->attempts, 0) << id;
    }
  }
}

TEST_P(EngineTest, EngineDestroyedWithoutStartOrStopIsFine) {
  { Engine engine(small_config(dir)); }
  {
    Engine engine(small_config(dir));
    engine.start();
  }
  {
    Engine engine(small_config(dir));
    engine.start();
    engine.stop();
    engine.stop();
  }
}

TEST_P(EngineTest, JobsLeftByAStoppedEngineRunInTheNextOne) {
  std::string id;
  {
    Engine engine(small_config(dir));
    id = engine.enqueue(spec("noop")).id;
  }
  Engine engine(small_config(dir));
  engine.start();
  EXPECT_EQ(wait_final(engine, id).status, Status::completed);
}

// ---- validation ---------------------------------------------------------------------------

TEST_P(EngineTest, InvalidSpecsAreRejectedNamingTheFieldAndWriteNothing) {
  EngineConfig config = small_config(dir);
  config.max_payload_bytes = 64;
  Engine engine(config);
  engine.register_processor("echo", std::make_shared<EchoProcessor>());
  engine.start();
  const int64_t before = engine.stats().total;

  struct Case {
    const char* label;
    JobSpec spec;
    std::string field;
    std::string value_in_message;
  };
  std::vector<Case> cases;
  auto add = [&](const char* label, auto&& mutate, std::string field, std::string value) {
    JobSpec s = spec("echo", R"({"ok":1})");
    mutate(s);
    cases.push_back(Case{label, s, std::move(field), std::move(value)});
  };
  add(
      "priority 0", [](JobSpec& s) { s.priority = 0; }, "priority", "0");
  add(
      "priority 11", [](JobSpec& s) { s.priority = 11; }, "priority", "11");
  add(
      "max_attempts 0", [](JobSpec& s) { s.max_attempts = 0; }, "max_attempts", "0");
  add(
      "timeout 0", [](JobSpec& s) { s.timeout_ms = 0; }, "timeout", "0");
  add(
      "negative timeout", [](JobSpec& s) { s.timeout_ms = -5'000; }, "timeout", "-5");
  add(
      "negative delay", [](JobSpec& s) { s.delay_ms = -1'000; }, "delay", "-1");
  add(
      "negative retry delay", [](JobSpec& s) { s.retry_delay_ms = -1; }, "retry_delay", "-0.001");
  add(
      "invalid JSON", [](JobSpec& s) { s.payload_json = "{not json"; }, "payload", "{not json");
  add(
      "empty payload", [](JobSpec& s) { s.payload_json = ""; }, "payload", "");
  add(
      "payload too big", [](JobSpec& s) { s.payload_json = "\"" + std::string(100, 'x') + "\""; },
      "payload", "102");
  add(
      "empty type", [](JobSpec& s) { s.type = ""; }, "type", "");
  add(
      "unknown parent", [](JobSpec& s) { s.parent_id = "00000000-0000-7000-8000-000000000000"; },
      "parent", "00000000-0000-7000-8000-000000000000");

  for (const auto& c : cases) {
    try {
      engine.enqueue(c.spec);
      ADD_FAILURE() << c.label << ": accepted";
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.field(), c.field) << c.label << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(c.value_in_message), std::string::npos)
          << c.label << ": " << e.what();
    }
    // The same spec inside a batch of good ones rejects the whole batch.
    EXPECT_THROW(engine.enqueue_many({spec("echo"), c.spec, spec("echo")}), ValidationError)
        << c.label;
  }
  engine.store().flush();
  EXPECT_EQ(engine.stats().total, before);
  EXPECT_TRUE(engine.jobs(JobQuery{}).empty());
}

TEST_P(EngineTest, EnqueueManyOfNothingWritesNothing) {
  Engine engine(small_config(dir));
  EXPECT_TRUE(engine.enqueue_many({}).empty());
  EXPECT_EQ(engine.stats().total, 0);
}

// A very long timeout (here about 317 years, as a caller meaning "no timeout" might pass) is a
// valid timeout: the job must run to its end, not time out at once.
TEST_P(EngineTest, VeryLongTimeoutDoesNotEndTheJobEarly) {
  Engine engine(small_config(dir));
  auto slow = std::make_shared<SlowProcessor>(100ms);
  engine.register_processor("slow", slow);
  engine.start();
  JobSpec s = spec("slow");
  s.timeout_ms = 10'000'000'000'000;
  const Job done = wait_final(engine, engine.enqueue(s).id);
  EXPECT_EQ(done.status, Status::completed) << done.error.value_or("");
}

TEST_P(EngineTest, UnknownTypeIsRejectedUnlessAllowed) {
  {
    Engine engine(small_config(dir));
    try {
      engine.enqueue(spec("no-such-type"));
      FAIL() << "accepted";
    } catch (const UnknownJobType& e) {
      EXPECT_EQ(e.field(), "type");
      EXPECT_NE(std::string(e.what()).find("no-such-type"), std::string::npos);
    }
    EXPECT_EQ(engine.stats().total, 0);
  }
  EngineConfig producer = small_config(dir);
  producer.allow_unknown_types = true;
  Engine engine(producer);
  engine.start();
  const Job job = engine.enqueue(spec("no-such-type"));
  EXPECT_EQ(engine.stats().total, 1);
  EXPECT_FALSE(engine.wait(job.id, 50ms).has_value());  // nobody here can run it
  EXPECT_EQ(engine.get(job.id)->status, Status::queued);
}

TEST_P(EngineTest, BadConfigurationAndQueriesAreValidationErrors) {
  EngineConfig config = small_config(dir);
  config.workers = 0;
  EXPECT_THROW(Engine{config}, ValidationError);
  config = small_config(dir);
  config.prefetch = -1;
  EXPECT_THROW(Engine{config}, ValidationError);
  Engine engine(small_config(dir));
  JobQuery q;
  q.limit = -1;
  EXPECT_THROW(engine.jobs(q), ValidationError);
  q.limit = 10;
  q.offset = -1;
  EXPECT_THROW(engine.jobs(q), ValidationError);
  EXPECT_THROW(engine.register_processor("", std::make_shared<EchoProcessor>()), ValidationError);
  EXPECT_THROW(engine.register_processor("x", nullptr), ValidationError);
}

TEST_F(SqliteEngineTest, EngineOnAMissingFolderIsAStoreError) {
  EngineConfig config = small_config(dir);
  config.path = dir.file("missing/jobs.db");
  EXPECT_THROW(Engine{config}, StoreError);
}

TEST_P(EngineTest, ChildJobsAreListedByParent) {
  Engine engine(small_config(dir));
  const Job parent = engine.enqueue(spec("noop"));
  JobSpec child = spec("noop");
  child.parent_id = parent.id;
  engine.enqueue(child);
  engine.enqueue(child);
  JobQuery q;
  q.parent_id = parent.id;
  EXPECT_EQ(engine.jobs(q).size(), 2u);
  EXPECT_EQ(engine.active().size(), 3u);
}

// ---- events -------------------------------------------------------------------------------

namespace {

void expect_events_of_a_completed_job_in_order_on_the_delivery_thread(EngineConfig config) {
  Engine engine(config);
  auto progress = std::make_shared<ProgressProcessor>();
  engine.register_processor("progress", progress);
  EventLog log(engine);
  engine.start();
  const Job job = engine.enqueue(spec("progress"));
  wait_final(engine, job.id);
  const auto events = log.for_job(engine, job.id);

  ASSERT_EQ(types_of(events), (std::vector<EventType>{
                                  EventType::created, EventType::status_changed, EventType::queued,
                                  EventType::status_changed, EventType::started,
                                  EventType::progress, EventType::progress, EventType::progress,
                                  EventType::status_changed, EventType::completed}));
  EXPECT_EQ(events[0].status, Status::created);
  EXPECT_EQ(events[1].status, Status::queued);
  EXPECT_EQ(events[3].previous_status, Status::queued);
  EXPECT_EQ(events[3].status, Status::running);
  EXPECT_EQ(events[4].attempt, 1);
  EXPECT_EQ(events[5].progress, 25);
  EXPECT_EQ(events[5].message, "first");
  EXPECT_EQ(events[6].progress, 50);
  EXPECT_EQ(events[6].message, "first");  // an empty message keeps the previous one
  EXPECT_EQ(events[7].progress, 75);
  EXPECT_EQ(events[8].status, Status::completed);
  EXPECT_EQ(events[8].previous_status, Status::running);
  EXPECT_EQ(events[9].result_json, std::optional<std::string>("{\"done\":true}"));
  EXPECT_EQ(events[9].job_type, "progress");
  for (size_t i = 1; i < events.size(); ++i)
    EXPECT_GE(events[i].timestamp, events[i - 1].timestamp);

  std::lock_guard lock(log.mutex);
  EXPECT_FALSE(log.off_delivery_thread);
  EXPECT_EQ(log.delivery_threads.size(), 1u);
  EXPECT_EQ(log.delivery_threads.count(progress->thread.load()), 0u);
  EXPECT_EQ(log.delivery_threads.count(std::this_thread::get_id()), 0u);
}

}  // namespace

TEST_P(EngineTest, EventsOfACompletedJobArriveInOrderOnTheDeliveryThread) {
  EngineConfig config = small_config(dir);
  config.claim_in_memory = false;
  expect_events_of_a_completed_job_in_order_on_the_delivery_thread(config);
}

// Alone on the file the engine claims in memory and writes the running state later.
// A job that starts and ends within one commit window has its running state coalesced away, and
// the progress it reported before its start was committed with it: progress events are
// coalesced by design. What must hold is the order: started, any progress, then the end.
TEST_F(SqliteEngineTest, EventsOfAJobClaimedInMemoryArriveInOrder) {
  EngineConfig config = small_config(dir);
  config.claim_in_memory = true;
  Engine engine(config);
  auto progress = std::make_shared<ProgressProcessor>();
  engine.register_processor("progress", progress);
  EventLog log(engine);
  engine.start();
  const Job job = engine.enqueue(spec("progress"));
  wait_final(engine, job.id);
  auto events = log.for_job(engine, job.id);
  std::vector<Event> lifecycle;
  size_t first_progress = events.size(), last_progress = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].type == EventType::progress) {
      first_progress = std::min(first_progress, i);
      last_progress = i;
    } else {
      lifecycle.push_back(events[i]);
    }
  }
  ASSERT_EQ(
      types_of(lifecycle),
      (std::vector<EventType>{EventType::created, EventType::status_changed, EventType::queued,
                              EventType::status_changed, EventType::started,
                              EventType::status_changed, EventType::completed}));
  if (first_progress < events.size()) {
    EXPECT_EQ(events[first_progress - 1].type, EventType::started);
    EXPECT_EQ(events[last_progress + 1].status, Status::completed);
  }
  EXPECT_EQ(lifecycle.back().result_json, std::optional<std::string>("{\"done\":true}"));
}

TEST_P(EngineTest, EventsOfAFailedJobEndWithTheFailure) {
  Engine engine(small_config(dir));
  engine.register_processor("reject", std::make_shared<RejectingProcessor>());
  EventLog log(engine);
  engine.start();
  const Job job = engine.enqueue(spec("reject"));
  wait_final(engine, job.id);
  const auto events = log.for_job(engine, job.id);
  EXPECT_EQ(types_of(events), (std::vector<EventType>{EventType::created, EventType::status_changed,
                                                      EventType::queued, EventType::status_changed,
                                                      EventType::started, EventType::status_changed,
                                                      EventType::failed}));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().status, Status::failed);
  EXPECT_EQ(events.back().error, std::optional<std::string>("payload is unusable"));
}

TEST_P(EngineTest, SubscriberThatThrowsDoesNotStopDeliveryOrWorkers) {
  Engine engine(small_config(dir));
  std::atomic<int> thrower_calls{0};
  engine.events().subscribe([&](const std::vector<Event>&) {
    ++thrower_calls;
    throw std::runtime_error("subscriber failure on purpose");
  });
  EventLog log(engine);
  engine.start();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(engine.enqueue(spec("noop")).id);
    EXPECT_EQ(wait_final(engine, ids.back()).status, Status::completed);
    const auto events = log.for_job(engine, ids.back());  // flushes: one batch per job at least
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().type, EventType::completed);
  }
  EXPECT_GE(thrower_calls.load(), 5);  // called again after each throw
}

TEST_P(EngineTest, ProgressIsVisibleWhileTheJobRuns) {
  Engine engine(small_config(dir));
  auto holds = std::make_shared<HoldsProgressProcessor>();
  engine.register_processor("holds", holds);
  engine.start();
  const Job job = engine.enqueue(spec("holds"));
  ASSERT_TRUE(holds->reported.wait());
  auto running = engine.get(job.id);
  ASSERT_TRUE(running.has_value());
  EXPECT_EQ(running->status, Status::running);
  EXPECT_EQ(running->progress, 40);
  EXPECT_EQ(running->message, "working");
  // The store catches up at the flush interval.
  auto store_has_it = [&] {
    auto stored = engine.store().get(job.id);
    return stored && stored->progress == 40;
  };
  EXPECT_TRUE(eventually(store_has_it));
  holds->release.open();
  EXPECT_EQ(wait_final(engine, job.id).progress, 100);
}

// ---- volume and concurrency ---------------------------------------------------------------

TEST_P(EngineTest, EnqueueManyOfTenThousandNoopJobsDrains) {
  EngineConfig config = small_config(dir, /*workers=*/4);
  Engine engine(config);
  std::vector<JobSpec> specs(10'000, spec("noop"));
  const auto jobs = engine.enqueue_many(specs);
  ASSERT_EQ(jobs.size(), 10'000u);
  EXPECT_EQ(engine.stats().count(Status::queued), 10'000);
  engine.start();
  ASSERT_TRUE(eventually([&] { return engine.stats().count(Status::completed) == 10'000; },
                         std::chrono::milliseconds(120'000)));
  const Stats s = engine.stats();
  EXPECT_EQ(s.total, 10'000);
  EXPECT_EQ(s.count(Status::queued), 0);
  EXPECT_EQ(s.count(Status::running), 0);
  std::set<std::string> unique;
  for (const auto& j : jobs) unique.insert(j.id);
  EXPECT_EQ(unique.size(), 10'000u);
}

TEST_P(EngineTest, ConcurrentEnqueueFromFourThreadsRunsEveryJobOnce) {
  Engine engine(small_config(dir, /*workers=*/3));
  auto recorder = std::make_shared<RecordsCallsProcessor>();
  engine.register_processor("count", recorder);
  engine.start();
  constexpr int kThreads = 4, kPerThread = 150;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) ids[t].push_back(engine.enqueue(spec("count")).id);
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (const auto& v : ids) all.insert(v.begin(), v.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
  for (const auto& id : all) ASSERT_EQ(wait_final(engine, id).status, Status::completed);
  std::lock_guard lock(recorder->mutex);
  EXPECT_EQ(recorder->count_by_id.size(), all.size());
  for (const auto& [id, n] : recorder->count_by_id) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(engine.stats().count(Status::completed), kThreads * kPerThread);
}

TEST_P(EngineTest, QueriesAndCancelsRaceWithRunningJobsSafely) {
  Engine engine(small_config(dir, /*workers=*/3));
  engine.start();
  std::vector<std::string> ids;
  for (int i = 0; i < 60; ++i)
    ids.push_back(engine.enqueue(spec("sleep", R"({"seconds":0.005})")).id);
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done.load()) {
      engine.stats();
      engine.active(50);
      for (size_t i = 0; i < ids.size(); i += 7) engine.get(ids[i]);
    }
  });
  std::thread canceller([&] {
    for (size_t i = 0; i < ids.size(); i += 3) engine.cancel(ids[i]);
  });
  canceller.join();
  for (const auto& id : ids) {
    const Status s = wait_final(engine, id).status;
    EXPECT_TRUE(s == Status::completed || s == Status::cancelled) << to_string(s);
  }
  done = true;
  reader.join();
  const Stats s = engine.stats();
  EXPECT_EQ(s.count(Status::completed) + s.count(Status::cancelled), 60);
}

// ---- several engines on one file (as several processes would be) -------------------------

TEST_P(EngineTest, TwoEnginesOnOneFileRunEachJobExactlyOnce) {
  auto recorder = std::make_shared<RecordsCallsProcessor>();
  Engine a(small_config(dir));
  Engine b(small_config(dir));
  a.register_processor("count", recorder);
  b.register_processor("count", recorder);
  a.start();
  b.start();
  std::vector<std::string> ids;
  for (int i = 0; i < 150; ++i) {
    ids.push_back(a.enqueue(spec("count")).id);
    ids.push_back(b.enqueue(spec("count")).id);
  }
  for (const auto& id : ids) ASSERT_EQ(wait_final(a, id).status, Status::completed) << id;
  std::lock_guard lock(recorder->mutex);
  EXPECT_EQ(recorder->count_by_id.size(), ids.size());
  for (const auto& [id, n] : recorder->count_by_id) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(a.stats().count(Status::completed), 300);
}

TEST_P(EngineTest, RunningJobCancelledFromAnotherEngine) {
  Engine owner(small_config(dir));
  auto stuck = std::make_shared<RunsUntilStopped>();
  owner.register_processor("stuck", stuck);
  EngineConfig producer = small_config(dir);
  producer.allow_unknown_types = true;
  Engine other(producer);  // not started: a producer/admin process
  owner.start();
  const Job job = other.enqueue(spec("stuck"));
  ASSERT_TRUE(stuck->started.wait());
  // What the other process sees: the running state, once the owner has written it.
  ASSERT_TRUE(eventually([&] { return other.get(job.id)->status == Status::running; }));
  EXPECT_TRUE(other.cancel(job.id));
  const auto ended = other.wait(job.id, kPatience);
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->status, Status::cancelled);
  EXPECT_EQ(stuck->last_reason.load(), StopReason::cancelled);
}

TEST_P(EngineTest, DeadWorkersJobsAreRecoveredOnStartAndALivePeersAreLeftAlone) {
  const std::string path = dir.file("jobs.db");
  std::string dead_job, live_job;
  {
    auto store = open_store(path);
    const int64_t now = now_ms();
    // Another host's workers: one silent for an hour, one heartbeating (its clock is an hour
    // ahead).
    auto other_host_worker = [](const std::string& id, int64_t heartbeat_at) {
      WorkerInfo w;
      w.id = id;
      w.hostname = "elsewhere";
      w.pid = 1;
      w.version = "0";
      w.started_at = heartbeat_at;
      w.heartbeat_at = heartbeat_at;
      w.state = "running";
      return w;
    };
    store->register_worker(other_host_worker("ghost", now - 3'600'000));
    store->register_worker(other_host_worker("peer", now + 3'600'000));
    for (std::string* id : {&dead_job, &live_job}) {
      NewJob j;
      j.id = new_job_id();
      j.type = "noop";
      j.priority = priority::normal;
      j.payload_json = "null";
      j.max_attempts = 3;
      j.timeout_ms = 60'000;
      j.retry_delay_ms = 10;
      j.created_at = now;
      j.run_at = now;
      j.user_initiated = true;
      *id = j.id;
      store->insert({j});
      ClaimRequest claim;
      claim.owner = id == &dead_job ? "ghost" : "peer";
      claim.limit = 1;
      claim.now = now;
      claim.lease_ms = 3'600'000;
      claim.types = {"noop"};
      ASSERT_EQ(store->claim(claim).size(), 1u);
    }
  }
  // The peer is alive: its heartbeat keeps changing (an hour ahead of ours). The ghost's never
  // does: it is dead once it stayed the same for a lease of the engine's own watch.
  std::atomic<bool> peer_alive{true};
  std::thread peer([&] {
    auto store = open_store(path);
    while (peer_alive) {
      store->heartbeat("peer", now_ms() + 3'600'000, 3'600'000);
      store->flush();
      std::this_thread::sleep_for(20ms);
    }
  });
  struct Join {
    std::atomic<bool>& alive;
    std::thread& t;
    ~Join() {
      alive = false;
      t.join();
    }
  } join{peer_alive, peer};
  EngineConfig cfg = small_config(dir);
  cfg.lease_ms = 500;
  Engine engine(cfg);
  engine.start();
  const Job recovered = wait_final(engine, dead_job);
  EXPECT_EQ(recovered.status, Status::completed);
  EXPECT_EQ(recovered.attempts, 2);  // the ghost's attempt counts

  std::this_thread::sleep_for(1500ms);  // three leases of rounds
  auto untouched = engine.get(live_job);
  ASSERT_TRUE(untouched.has_value());
  EXPECT_EQ(untouched->status, Status::running);
  EXPECT_EQ(untouched->lease_owner, "peer");
  EXPECT_EQ(untouched->attempts, 1);
}

TEST_F(SqliteEngineTest, SeedFilesRunningJobIsRecoveredAndRunOnStart) {
  {
    jobforge::testing::RawDb raw(dir.file("jobs.db"));
    raw.exec(R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'created',
        priority INTEGER NOT NULL DEFAULT 5, payload TEXT NOT NULL, progress INTEGER DEFAULT 0,
        result TEXT, error TEXT, attempts INTEGER DEFAULT 0, max_attempts INTEGER DEFAULT 3,
        parent_job_id TEXT, user_initiated INTEGER DEFAULT 1, timeout_seconds INTEGER DEFAULT 300,
        created_at INTEGER NOT NULL, queued_at INTEGER, started_at INTEGER,
        completed_at INTEGER, timeout_at INTEGER,
        FOREIGN KEY (parent_job_id) REFERENCES jobs(id));
      CREATE INDEX idx_jobs_status ON jobs(status);
      CREATE INDEX idx_jobs_type ON jobs(type);
      CREATE INDEX idx_jobs_priority ON jobs(priority);
      CREATE INDEX idx_jobs_user_initiated ON jobs(user_initiated);
      CREATE INDEX idx_jobs_parent_id ON jobs(parent_job_id);
      CREATE INDEX idx_jobs_created_at ON jobs(created_at);
      INSERT INTO jobs (id, type, status, payload, attempts, created_at, queued_at, started_at)
      VALUES ('3d2c1b0a-9f8e-4d7c-a6b5-4a3b2c1d0e9f', 'noop', 'running', 'null', 1, 1000, 1000,
              1100),
             ('4e3d2c1b-0a9f-4e8d-b7c6-5b4a3c2d1e0f', 'noop', 'queued', 'null', 0, 1000, 1000,
              NULL);
    )sql");
  }
  Engine engine(small_config(dir));
  engine.start();
  const Job was_running = wait_final(engine, "3d2c1b0a-9f8e-4d7c-a6b5-4a3b2c1d0e9f");
  EXPECT_EQ(was_running.status, Status::completed);
  EXPECT_EQ(was_running.attempts, 2);
  EXPECT_EQ(wait_final(engine, "4e3d2c1b-0a9f-4e8d-b7c6-5b4a3c2d1e0f").status, Status::completed);
  EXPECT_EQ(engine.stats().count(Status::completed), 2);
}

// Heartbeats renew the leases of running jobs, so a peer never takes back a job that runs for
// longer than one lease.
TEST_P(EngineTest, HeartbeatsKeepALongJobFromBeingTakenByAPeer) {
  EngineConfig config = small_config(dir, /*workers=*/1);
  config.lease_ms = 800;
  config.heartbeat_ms = 40;
  auto recorder = std::make_shared<RecordsCallsProcessor>();
  class LongJob final : public Processor {
   public:
    explicit LongJob(std::shared_ptr<RecordsCallsProcessor> r) : recorder_(std::move(r)) {}
    std::string run(Context& ctx, const std::string& payload) override {
      recorder_->run(ctx, payload);
      std::this_thread::sleep_for(1600ms);  // two leases
      return "null";
    }

   private:
    std::shared_ptr<RecordsCallsProcessor> recorder_;
  };
  auto long_job = std::make_shared<LongJob>(recorder);
  Engine a(config);
  Engine b(config);
  a.register_processor("long", long_job);
  b.register_processor("long", long_job);
  a.start();
  b.start();
  const Job job = a.enqueue(spec("long"));
  const Job done = wait_final(a, job.id);
  EXPECT_EQ(done.status, Status::completed);
  EXPECT_EQ(done.attempts, 1);
  std::lock_guard lock(recorder->mutex);
  EXPECT_EQ(recorder->count_by_id[job.id], 1);
}

// A process alone on the file claims in memory; when a second worker process attaches, claims
// must become durable before either runs another job, so that no job runs twice.
TEST_P(EngineTest, SecondEngineJoiningMidStreamNeverRunsAJobTwice) {
  auto recorder = std::make_shared<RecordsCallsProcessor>();
  Engine first(small_config(dir));
  first.register_processor("count", recorder);
  std::vector<JobSpec> specs(3'000, spec("count"));
  const auto jobs = first.enqueue_many(specs);
  first.start();
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(recorder->mutex);
    return recorder->count_by_id.size() >= 100;
  }));
  Engine second(small_config(dir));
  second.register_processor("count", recorder);
  second.start();
  ASSERT_TRUE(eventually([&] { return first.stats().count(Status::completed) == 3'000; },
                         std::chrono::milliseconds(120'000)));
  std::lock_guard lock(recorder->mutex);
  EXPECT_EQ(recorder->count_by_id.size(), 3'000u);
  int twice = 0;
  for (const auto& [id, n] : recorder->count_by_id) twice += n > 1;
  EXPECT_EQ(twice, 0) << "jobs run more than once";
}

// Another process cancels a job just as it starts here (before this process has written its
// running state, when claims are in memory). Whatever the file said at that moment, the
// processor must be told to stop, or it runs on under a 'cancelled' status.
TEST_P(EngineTest, JobCancelledFromAnotherProcessAsItStartsIsStopped) {
  EngineConfig producer_config = small_config(dir);
  producer_config.allow_unknown_types = true;
  Engine producer(producer_config);
  class CancelsItselfFromAnotherProcess final : public Processor {
   public:
    explicit CancelsItselfFromAnotherProcess(Engine& other) : other_(other) {}
    std::string run(Context& ctx, const std::string&) override {
      other_.cancel(ctx.job_id());
      const auto give_up = std::chrono::steady_clock::now() + 3s;
      while (!ctx.cancelled() && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(1ms);
      reason = ctx.stop_reason();
      ctx.check_cancelled();
      return "\"ran to the end\"";
    }
    std::atomic<StopReason> reason{StopReason::none};

   private:
    Engine& other_;
  };
  auto processor = std::make_shared<CancelsItselfFromAnotherProcess>(producer);
  Engine owner(small_config(dir, /*workers=*/1));
  owner.register_processor("self-cancel", processor);
  owner.start();
  const Job job = producer.enqueue(spec("self-cancel"));
  const Job ended = wait_final(owner, job.id);
  EXPECT_EQ(ended.status, Status::cancelled);
  ASSERT_TRUE(eventually([&] { return owner.get(job.id)->status == Status::cancelled; }));
  owner.stop();
  EXPECT_EQ(processor->reason.load(), StopReason::cancelled)
      << "the processor was never told that its job was cancelled";
}

// stop(false) asks running jobs to stop and puts claimed ones back; no job may start after it
// was called. A claim in flight when stop() begins must not slip a job to a worker. The window
// is narrow, so the scenario is repeated.
TEST_F(SqliteEngineTest, NoJobStartsAfterStopWithoutWaitingWasCalled) {
  class StopsAtOnce final : public Processor {
   public:
    std::string run(Context& ctx, const std::string&) override {
      started = true;
      const auto give_up = std::chrono::steady_clock::now() + kPatience;
      while (!ctx.cancelled() && std::chrono::steady_clock::now() < give_up)
        std::this_thread::yield();
      ctx.check_cancelled();
      return "null";
    }
    std::atomic<bool> started{false};
  };
  int started_after_stop = 0;
  for (int round = 0; round < 20; ++round) {
    TempDir round_dir;
    EngineConfig config = small_config(round_dir, /*workers=*/1);
    Engine engine(config);
    auto blocker = std::make_shared<StopsAtOnce>();
    auto late = std::make_shared<RecordsCallsProcessor>();
    engine.register_processor("blocker", blocker);
    engine.register_processor("late", late);
    engine.start();
    engine.enqueue(spec("blocker"));
    ASSERT_TRUE(eventually([&] { return blocker->started.load(); }));
    engine.enqueue(spec("late"));  // the dispatcher is woken to claim it ...
    engine.stop(/*wait=*/false);   // ... as the engine stops
    std::lock_guard lock(late->mutex);
    started_after_stop += static_cast<int>(late->count_by_id.size());
  }
  EXPECT_EQ(started_after_stop, 0) << "jobs started by a worker after stop(false) was called";
}

// ---- observability: logs, outcome counters, stages, progress persistence, statistics -------

// Logs, counts and stages, then finishes.
class ObservedProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    ctx.stage("scan", 4);
    ctx.log(LogLevel::info, "scanning", R"({"dir":"/media"})");
    ctx.increment();
    ctx.increment(2);
    ctx.count("inserts", 2);
    ctx.count("updates");
    ctx.count("inserts", 3);
    ctx.stage("write", 0);
    ctx.log(LogLevel::warning, "slow disk");
    ctx.log(LogLevel::debug, "detail");
    ctx.progress(7, 0, "7 written");
    return "null";
  }
};

TEST_P(EngineTest, LogLinesOutcomeCountersAndStagesAreStoredWithTheJob) {
  Engine engine(small_config(dir));
  engine.register_processor("observed", std::make_shared<ObservedProcessor>());
  EventLog events(engine);
  engine.start();
  const Job job = engine.enqueue(spec("observed"));
  const Job done = wait_final(engine, job.id);
  ASSERT_EQ(done.status, Status::completed);
  EXPECT_TRUE(same_json(done.outcome_json, R"({"inserts":5,"updates":1})"));
  EXPECT_EQ(done.stage, "write");
  EXPECT_DOUBLE_EQ(done.progress_current, 7);
  EXPECT_DOUBLE_EQ(done.progress_total, 0);
  EXPECT_EQ(done.message, "7 written");

  LogQuery q;
  q.job_id = job.id;
  auto lines = engine.logs(q);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].message, "scanning");
  EXPECT_EQ(lines[0].stage, "scan");
  EXPECT_TRUE(same_json(lines[0].fields_json, R"({"dir":"/media"})"));
  EXPECT_EQ(lines[0].attempt, 1);
  EXPECT_EQ(lines[1].level, LogLevel::warning);
  EXPECT_EQ(lines[1].stage, "write");
  EXPECT_LT(lines[0].id, lines[1].id);
  q.min_level = LogLevel::info;
  EXPECT_EQ(engine.logs(q).size(), 2u);
  q.after_id = lines[0].id;
  EXPECT_EQ(engine.logs(q).size(), 1u);
  q = LogQuery{};
  q.job_id = job.id;
  q.limit = 1;
  q.newest = true;
  ASSERT_EQ(engine.logs(q).size(), 1u);
  EXPECT_EQ(engine.logs(q)[0].message, "detail");
  q.job_id = "no-such-job";
  EXPECT_THROW(engine.logs(q), ValidationError);

  // job-log events come after job-started and before the end.
  const auto evs = events.for_job(engine, job.id);
  std::vector<EventType> order;
  for (const auto& e : evs) {
    if (e.type == EventType::started || e.type == EventType::log || e.type == EventType::completed)
      order.push_back(e.type);
  }
  EXPECT_EQ(order, (std::vector<EventType>{EventType::started, EventType::log, EventType::log,
                                           EventType::log, EventType::completed}));
}

TEST_F(SqliteEngineTest, LogLinesOfAJobClaimedInMemoryFollowItsStart) {
  auto config = small_config(dir, 1);
  config.claim_in_memory = true;
  Engine engine(config);
  engine.register_processor("observed", std::make_shared<ObservedProcessor>());
  EventLog events(engine);
  engine.start();
  for (int round = 0; round < 20; ++round) {
    const Job job = engine.enqueue(spec("observed"));
    wait_final(engine, job.id);
    const auto evs = events.for_job(engine, job.id);
    bool started = false;
    for (const auto& e : evs) {
      if (e.type == EventType::started) started = true;
      if (e.type == EventType::log) {
        EXPECT_TRUE(started) << "job-log before job-started";
      }
    }
    EXPECT_EQ(std::count_if(evs.begin(), evs.end(),
                            [](const Event& e) { return e.type == EventType::log; }),
              3);
  }
}

// Moves through 0..100 in steps of 1, holding at the end until released.
class SteppingProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string&) override {
    for (int i = 0; i <= 100; ++i) ctx.progress(i, 100);
    reached.open();
    release.wait();
    return "null";
  }
  Gate reached, release;
};

TEST_P(EngineTest, ProgressReachesTheStoreEveryTenPointsAndAlwaysAtTheEnd) {
  auto config = small_config(dir, 1);
  config.progress_persist_ms = 3'600'000;  // only the step rule applies
  Engine engine(config);
  auto stepping = std::make_shared<SteppingProcessor>();
  engine.register_processor("stepping", stepping);
  engine.start();
  const Job job = engine.enqueue(spec("stepping"));
  ASSERT_TRUE(stepping->reached.wait());
  // In memory at once; in the store after the next flush (every 50 ms here).
  EXPECT_EQ(engine.get(job.id)->progress, 100);
  ASSERT_TRUE(eventually([&] {
    engine.store().flush();
    return engine.store().get(job.id)->progress == 100;
  }));
  const auto writes = engine.local_stats().progress_writes;
  EXPECT_GE(writes, 1u);
  EXPECT_LE(writes, 11u) << "101 updates should cost at most one write per 10 points";
  stepping->release.open();
  EXPECT_EQ(wait_final(engine, job.id).progress, 100);
}

TEST_P(EngineTest, ProgressEventsAreRateLimitedAndTheLastOneStillArrives) {
  auto config = small_config(dir, 1);
  config.progress_event_ms = 200;
  Engine engine(config);
  auto stepping = std::make_shared<SteppingProcessor>();
  engine.register_processor("stepping", stepping);
  EventLog events(engine);
  engine.start();
  const Job job = engine.enqueue(spec("stepping"));
  ASSERT_TRUE(stepping->reached.wait());
  // 101 updates in well under 200 ms: the first is published, the last follows as a trailing
  // event once the interval has passed, though no further update comes.
  ASSERT_TRUE(eventually([&] {
    const auto evs = events.for_job(engine, job.id);
    return !evs.empty() && evs.back().type == EventType::progress && evs.back().progress == 100;
  }));
  const auto evs = events.for_job(engine, job.id);
  const auto progress_events = std::count_if(
      evs.begin(), evs.end(), [](const Event& e) { return e.type == EventType::progress; });
  EXPECT_LE(progress_events, 3);
  stepping->release.open();
  wait_final(engine, job.id);
}

TEST_P(EngineTest, StatisticsPerTypeCountWindowedOutcomesAndRunTimes) {
  Engine engine(small_config(dir, 2));
  engine.register_processor("reject", std::make_shared<RejectingProcessor>());
  engine.start();
  std::vector<Job> jobs;
  for (int i = 0; i < 6; ++i) jobs.push_back(engine.enqueue(spec("sleep", R"({"seconds":0.02})")));
  for (int i = 0; i < 2; ++i) {
    JobSpec s = spec("reject");
    s.max_attempts = 1;
    jobs.push_back(engine.enqueue(s));
  }
  for (const auto& j : jobs) wait_final(engine, j.id);
  engine.store().flush();
  const StatsDetail d = engine.stats_detail();
  EXPECT_EQ(d.totals.count(Status::completed), 6);
  EXPECT_EQ(d.totals.count(Status::failed), 2);
  ASSERT_EQ(d.types.size(), 2u);
  const TypeStats& rej = d.types[0];
  const TypeStats& slp = d.types[1];
  EXPECT_EQ(rej.type, "reject");
  EXPECT_EQ(rej.count(Status::failed), 2);
  EXPECT_EQ(rej.failed, 2);
  EXPECT_DOUBLE_EQ(rej.error_rate, 1.0);
  EXPECT_EQ(slp.type, "sleep");
  EXPECT_EQ(slp.count(Status::completed), 6);
  EXPECT_EQ(slp.completed, 6);
  EXPECT_EQ(slp.runs, 6);
  EXPECT_DOUBLE_EQ(slp.error_rate, 0.0);
  EXPECT_GE(slp.mean_run_ms, 15.0);
  EXPECT_GE(slp.p95_run_ms, 15.0);
  EXPECT_LT(slp.p95_run_ms, 2'000.0);
  EXPECT_GT(slp.created_per_s, 0.0);
  EXPECT_GT(slp.completed_per_s, 0.0);
  EXPECT_EQ(d.queued, 0);
  EXPECT_EQ(d.oldest_due_age_ms, 0);
  EXPECT_EQ(engine.integrity_check(), "ok");
}

TEST_P(EngineTest, OldestDueAgeAndDueCountIgnoreDelayedJobs) {
  Engine engine(small_config(dir));  // not started: nothing runs
  JobSpec later = spec("noop");
  later.delay_ms = 60'000;
  engine.enqueue(later);
  engine.enqueue(spec("noop"));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const StatsDetail d = engine.stats_detail();
  EXPECT_EQ(d.queued, 2);
  EXPECT_EQ(d.due, 1);
  EXPECT_GE(d.oldest_due_age_ms, 25);
  EXPECT_LT(d.oldest_due_age_ms, 30'000);
}

// stop(wait=true) waits for running jobs; a stop(wait=false) meanwhile (a second Ctrl-C) asks
// them to stop: they go back to the queue, their attempt not counted, and both calls return.
TEST_P(EngineTest, StopWithoutWaitingEscalatesAStopThatIsWaiting) {
  Engine engine(small_config(dir, 1));
  auto runner = std::make_shared<RunsUntilStopped>();
  engine.register_processor("runner", runner);
  engine.start();
  const Job job = engine.enqueue(spec("runner"));
  ASSERT_TRUE(runner->started.wait());
  std::atomic<bool> waiting_stop_returned{false};
  std::thread waiting([&] {
    engine.stop(true);
    waiting_stop_returned = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(waiting_stop_returned) << "stop(true) returned while its job still ran";
  engine.stop(false);
  waiting.join();
  EXPECT_TRUE(waiting_stop_returned);
  EXPECT_EQ(runner->last_reason.load(), StopReason::shutdown);
  auto got = engine.get(job.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::queued);
  EXPECT_EQ(got->attempts, 0);
}

// ---- fork ------------------------------------------------------------------------------------

// An engine made before fork(), used in the child: its threads do not exist there and its
// connections belong to the parent. Every call raises one clear error instead of waiting for a
// commit no thread will make, and its destructor returns at once (SIGALRM ends a hang).
TEST_P(EngineTest, EngineMadeBeforeAForkRaisesInTheChildAndItsDestructorReturns) {
  auto engine = std::make_unique<Engine>(small_config(dir));
  engine->register_processor("echo", std::make_shared<EchoProcessor>());
  engine->start();
  const Job before = engine->enqueue(spec("echo", "1"));
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);
    int code = 0;
    auto expect_fork_error = [&](int bit, const std::function<void()>& call) {
      try {
        call();
        code |= bit;
      } catch (const Error& e) {
        if (std::string(e.what()).find("forked child") == std::string::npos) code |= bit;
      }
    };
    expect_fork_error(1, [&] { engine->enqueue(spec("echo", "2")); });
    expect_fork_error(2, [&] { engine->get(before.id); });
    expect_fork_error(4, [&] { engine->wait(before.id, 10ms); });
    expect_fork_error(8, [&] { engine->start(); });
    if (engine->running()) code |= 16;
    engine->stop();  // nothing of it runs here: returns
    engine.reset();  // leaks what belongs to the parent, joins nothing
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child ended by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The parent's engine is untouched by all that.
  EXPECT_EQ(wait_final(*engine, engine->enqueue(spec("echo", "3")).id).status, Status::completed);
}

INSTANTIATE_TEST_SUITE_P(Stores, EngineTest, ::testing::Values(Backend::sqlite, Backend::postgres),
                         jobforge::testing::backend_name);
