// The job model: the lifecycle table, status names, and job ids.
#include "jobforge/job.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace jobforge;

namespace {

constexpr std::array<Status, kStatusCount> kAllStatuses = {
    Status::created,   Status::queued,    Status::running, Status::completed,
    Status::failed,    Status::cancelled, Status::timeout};

// The lifecycle as DESIGN.md states it, written out independently of job.cpp's table.
const std::set<std::pair<Status, Status>>& legal_transitions() {
  static const std::set<std::pair<Status, Status>> legal = {
      {Status::created, Status::queued},     {Status::created, Status::cancelled},
      {Status::queued, Status::running},     {Status::queued, Status::cancelled},
      {Status::running, Status::queued},     {Status::running, Status::completed},
      {Status::running, Status::failed},     {Status::running, Status::cancelled},
      {Status::running, Status::timeout},    {Status::failed, Status::queued},
      {Status::cancelled, Status::queued},   {Status::timeout, Status::queued},
  };
  return legal;
}

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// 8-4-4-4-12 lowercase hex, version nibble 7, variant bits 10xx.
::testing::AssertionResult is_uuid_v7(const std::string& id) {
  if (id.size() != 36) return ::testing::AssertionFailure() << id << " is not 36 characters";
  for (size_t i = 0; i < id.size(); ++i) {
    const bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_position ? id[i] != '-' : !is_lower_hex(id[i]))
      return ::testing::AssertionFailure() << id << " has '" << id[i] << "' at " << i;
  }
  if (id[14] != '7') return ::testing::AssertionFailure() << id << " is not version 7";
  if (std::string("89ab").find(id[19]) == std::string::npos)
    return ::testing::AssertionFailure() << id << " does not have the RFC 9562 variant";
  return ::testing::AssertionSuccess();
}

}  // namespace

// ---- transition table ---------------------------------------------------------------------

TEST(JobLifecycle, EveryPairFollowsTheDesignTable) {
  for (Status from : kAllStatuses) {
    for (Status to : kAllStatuses) {
      const bool expected = legal_transitions().count({from, to}) == 1;
      EXPECT_EQ(can_transition(from, to), expected)
          << to_string(from) << " -> " << to_string(to);
    }
  }
}

TEST(JobLifecycle, CompletedIsADeadEnd) {
  for (Status to : kAllStatuses) EXPECT_FALSE(can_transition(Status::completed, to)) << to_string(to);
}

TEST(JobLifecycle, NothingLeadsBackToCreated) {
  for (Status from : kAllStatuses) EXPECT_FALSE(can_transition(from, Status::created));
}

TEST(JobLifecycle, NoStatusTransitionsToItself) {
  for (Status s : kAllStatuses) EXPECT_FALSE(can_transition(s, s)) << to_string(s);
}

TEST(JobLifecycle, StatusesLeadingToMatchTheTable) {
  for (Status to : kAllStatuses) {
    std::vector<Status> expected;
    for (Status from : kAllStatuses)
      if (legal_transitions().count({from, to})) expected.push_back(from);
    EXPECT_EQ(statuses_leading_to(to), expected) << to_string(to);
  }
}

TEST(JobLifecycle, StatusesLeadingToCancelledAndQueued) {
  EXPECT_EQ(statuses_leading_to(Status::cancelled),
            (std::vector<Status>{Status::created, Status::queued, Status::running}));
  EXPECT_EQ(statuses_leading_to(Status::queued),
            (std::vector<Status>{Status::created, Status::running, Status::failed,
                                 Status::cancelled, Status::timeout}));
  EXPECT_TRUE(statuses_leading_to(Status::created).empty());
  EXPECT_EQ(statuses_leading_to(Status::running), std::vector<Status>{Status::queued});
}

TEST(JobLifecycle, FinalStatusesAreTheFourEnds) {
  EXPECT_FALSE(is_final(Status::created));
  EXPECT_FALSE(is_final(Status::queued));
  EXPECT_FALSE(is_final(Status::running));
  EXPECT_TRUE(is_final(Status::completed));
  EXPECT_TRUE(is_final(Status::failed));
  EXPECT_TRUE(is_final(Status::cancelled));
  EXPECT_TRUE(is_final(Status::timeout));
}

// ---- status names -------------------------------------------------------------------------

TEST(JobStatusNames, ParseOfToStringRoundTrips) {
  for (Status s : kAllStatuses) {
    const auto parsed = parse_status(to_string(s));
    ASSERT_TRUE(parsed.has_value()) << to_string(s);
    EXPECT_EQ(*parsed, s);
  }
}

TEST(JobStatusNames, NamesAreTheStoredLowercaseWords) {
  EXPECT_EQ(to_string(Status::created), "created");
  EXPECT_EQ(to_string(Status::queued), "queued");
  EXPECT_EQ(to_string(Status::running), "running");
  EXPECT_EQ(to_string(Status::completed), "completed");
  EXPECT_EQ(to_string(Status::failed), "failed");
  EXPECT_EQ(to_string(Status::cancelled), "cancelled");
  EXPECT_EQ(to_string(Status::timeout), "timeout");
}

TEST(JobStatusNames, UnknownNamesDoNotParse) {
  EXPECT_FALSE(parse_status("").has_value());
  EXPECT_FALSE(parse_status("pending").has_value());
  EXPECT_FALSE(parse_status("Queued").has_value());
  EXPECT_FALSE(parse_status("queued ").has_value());
  EXPECT_FALSE(parse_status("canceled").has_value());
}

// ---- job ids ------------------------------------------------------------------------------

TEST(JobIds, AreVersion7UuidsInCanonicalForm) {
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(is_uuid_v7(new_job_id()));
}

TEST(JobIds, CarryTheCurrentUnixMillisecondsInTheFirst48Bits) {
  const int64_t before = now_ms();
  const std::string id = new_job_id();
  const int64_t after = now_ms();
  const std::string hex = id.substr(0, 8) + id.substr(9, 4);
  const int64_t stamp = std::stoll(hex, nullptr, 16);
  EXPECT_GE(stamp, before);
  EXPECT_LE(stamp, after);
}

TEST(JobIds, AreUniqueAcrossFourThreadsOfTenThousand) {
  constexpr int kThreads = 4, kPerThread = 10'000;
  std::vector<std::vector<std::string>> per_thread(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto& out = per_thread[t];
      out.reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) out.push_back(new_job_id());
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (const auto& ids : per_thread) {
    for (const auto& id : ids) {
      ASSERT_TRUE(is_uuid_v7(id));
      all.insert(id);
    }
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
}

// job.hpp promises time-ordered ids "so inserts append to the primary key's B-tree", and job.cpp
// says a counter keeps this process's ids increasing within one millisecond. One thread making
// ids back to back easily makes more than 4096 in a millisecond, the size of that counter.
TEST(JobIds, FromOneThreadAreStrictlyIncreasing) {
  constexpr int kCount = 50'000;
  std::vector<std::string> ids;
  ids.reserve(kCount);
  for (int i = 0; i < kCount; ++i) ids.push_back(new_job_id());
  int out_of_order = 0;
  size_t first_bad = 0;
  for (size_t i = 1; i < ids.size(); ++i) {
    if (!(ids[i - 1] < ids[i])) {
      if (out_of_order++ == 0) first_bad = i;
    }
  }
  EXPECT_EQ(out_of_order, 0) << "first at " << first_bad << ": " << ids[first_bad - (first_bad > 0)]
                             << " then " << ids[first_bad];
}

TEST(JobIds, TwoInARowAreOrdered) {
  const auto a = new_job_id();
  const auto b = new_job_id();
  EXPECT_LT(a, b);
}

// ---- defaults -----------------------------------------------------------------------------

TEST(JobSpecDefaults, LeaveOptionsToTheProcessorAndEngine) {
  JobSpec spec;
  EXPECT_EQ(spec.payload_json, "null");
  EXPECT_FALSE(spec.priority.has_value());
  EXPECT_FALSE(spec.max_attempts.has_value());
  EXPECT_FALSE(spec.timeout_ms.has_value());
  EXPECT_FALSE(spec.retry_delay_ms.has_value());
  EXPECT_EQ(spec.delay_ms, 0);
  EXPECT_TRUE(spec.user_initiated);
}

TEST(JobStats, CountReadsTheStatusSlot) {
  Stats s;
  s.by_status[static_cast<int>(Status::failed)] = 4;
  EXPECT_EQ(s.count(Status::failed), 4);
  EXPECT_EQ(s.count(Status::queued), 0);
}

// ---- the clock ----------------------------------------------------------------------------

// A step of the wall clock while the process runs (simulated with the test-only offset) is not
// followed, backwards or forwards; time goes on by the monotonic clock.
TEST(Clock, NowMsGoesOnThroughAStepOfTheWallClock) {
  const auto system_ms = [] {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  };
  const int64_t before = now_ms();
  EXPECT_LT(std::abs(before - system_ms()), 1000);
  set_test_clock_offset_ms(-3'600'000);
  const int64_t after_back = now_ms();
  EXPECT_GE(after_back, before - 5);  // goes on from where it was (to a few ms: two clocks' ms)
  EXPECT_LT(after_back - before, 1000);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_GE(now_ms(), after_back + 40);  // and it keeps moving
  set_test_clock_offset_ms(0);           // a step of one hour forward: not followed either
  const int64_t after_forward = now_ms();
  EXPECT_LT(after_forward - after_back, 1000);
  EXPECT_LT(std::abs(after_forward - system_ms()), 1000);
}

// A forked child inherits the id generator's state: without a new seed it draws exactly the
// random parts its parent (and every sibling) draws next, and in the same millisecond the same
// ids. The random parts (the last 64 bits) of parent and child must differ, whatever the clock.
TEST(JobIds, ParentAndForkedChildDrawDifferentRandomParts) {
  constexpr int kCount = 200;
  (void)new_job_id();  // this thread's generator exists before the fork
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    for (int i = 0; i < kCount; ++i) out += new_job_id() + "\n";
    const bool written = write(fds[1], out.data(), out.size()) == static_cast<ssize_t>(out.size());
    _exit(written ? 0 : 1);
  }
  close(fds[1]);
  std::set<std::string> tails;
  for (int i = 0; i < kCount; ++i) tails.insert(new_job_id().substr(19));
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
    text.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(text.size(), static_cast<size_t>(kCount) * 37);
  for (size_t at = 0; at < text.size(); at += 37) tails.insert(text.substr(at + 19, 17));
  EXPECT_EQ(tails.size(), static_cast<size_t>(2 * kCount));
}
