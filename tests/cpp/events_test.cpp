// EventBus: batches on one delivery thread, subscribe/unsubscribe, flush, stop, and the capacity
// bound that drops progress events only.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "jobforge/events.hpp"
#include "test_support.hpp"

using namespace jobforge;
using jobforge::testing::eventually;
using jobforge::testing::Gate;

namespace {

Event make_event(EventType type, int n) {
  Event e;
  e.type = type;
  e.job_id = "job-" + std::to_string(n);
  e.job_type = "work";
  e.progress = n;
  return e;
}

// Records what a subscriber received, batch by batch.
struct Recorder {
  std::mutex m;
  std::vector<std::vector<Event>> batches;
  std::vector<std::thread::id> threads;

  EventBatchHandler handler() {
    return [this](const std::vector<Event>& batch) {
      std::lock_guard lock(m);
      batches.push_back(batch);
      threads.push_back(std::this_thread::get_id());
    };
  }
  std::vector<Event> events() {
    std::lock_guard lock(m);
    std::vector<Event> out;
    for (auto& b : batches) out.insert(out.end(), b.begin(), b.end());
    return out;
  }
  size_t batch_count() {
    std::lock_guard lock(m);
    return batches.size();
  }
};

std::vector<int> progress_values(const std::vector<Event>& events) {
  std::vector<int> out;
  for (const auto& e : events) out.push_back(e.progress);
  return out;
}

}  // namespace

TEST(EventBus, DeliversEveryEventInPublishOrderToEverySubscriber) {
  EventBus bus;
  Recorder a, b;
  bus.subscribe(a.handler());
  bus.subscribe(b.handler());
  std::vector<int> expected;
  for (int i = 0; i < 500; ++i) {
    bus.publish(make_event(EventType::progress, i));
    expected.push_back(i);
  }
  std::vector<Event> tail;
  for (int i = 500; i < 1000; ++i) {
    tail.push_back(make_event(EventType::status_changed, i));
    expected.push_back(i);
  }
  bus.publish(std::move(tail));
  bus.flush();
  EXPECT_EQ(progress_values(a.events()), expected);
  EXPECT_EQ(progress_values(b.events()), expected);
  EXPECT_EQ(bus.dropped(), 0u);
}

TEST(EventBus, EventsPublishedWhileASubscriberIsBusyArriveAsOneBatch) {
  EventBus bus;
  Gate first_batch_entered, release;
  Recorder rec;
  bus.subscribe([&](const std::vector<Event>& batch) {
    if (!first_batch_entered.is_open()) {
      first_batch_entered.open();
      release.wait();
    }
    rec.handler()(batch);
  });
  bus.publish(make_event(EventType::started, 0));
  ASSERT_TRUE(first_batch_entered.wait());
  for (int i = 1; i <= 200; ++i) bus.publish(make_event(EventType::progress, i));
  release.open();
  bus.flush();
  std::lock_guard lock(rec.m);
  ASSERT_EQ(rec.batches.size(), 2u);
  EXPECT_EQ(rec.batches[0].size(), 1u);
  EXPECT_EQ(rec.batches[1].size(), 200u);
}

TEST(EventBus, HandlersRunOnTheDeliveryThreadNotThePublisher) {
  EventBus bus;
  std::atomic<int> on_delivery{0}, elsewhere{0};
  std::atomic<bool> same_as_publisher{false};
  const auto publisher = std::this_thread::get_id();
  bus.subscribe([&](const std::vector<Event>&) {
    (bus.on_delivery_thread() ? on_delivery : elsewhere)++;
    if (std::this_thread::get_id() == publisher) same_as_publisher = true;
  });
  bus.publish(make_event(EventType::queued, 1));
  bus.flush();
  EXPECT_GE(on_delivery.load(), 1);
  EXPECT_EQ(elsewhere.load(), 0);
  EXPECT_FALSE(same_as_publisher.load());
  EXPECT_FALSE(bus.on_delivery_thread());
}

TEST(EventBus, UnsubscribedHandlerIsNotCalledAgain) {
  EventBus bus;
  Recorder kept, dropped;
  bus.subscribe(kept.handler());
  const auto id = bus.subscribe(dropped.handler());
  bus.publish(make_event(EventType::queued, 1));
  bus.flush();
  bus.unsubscribe(id);
  for (int i = 2; i <= 50; ++i) bus.publish(make_event(EventType::queued, i));
  bus.flush();
  EXPECT_EQ(progress_values(dropped.events()), std::vector<int>{1});
  EXPECT_EQ(kept.events().size(), 50u);
  bus.unsubscribe(id);      // twice: harmless
  bus.unsubscribe(12345);   // unknown: harmless
}

TEST(EventBus, UnsubscribeWhileAnotherSubscriberHoldsTheBatchTakesEffect) {
  EventBus bus;
  Gate in_first, release;
  std::atomic<int> first{-1};  // which subscriber got the batch first (and holds it)
  std::atomic<int> calls[2] = {0, 0};
  SubscriptionId ids[2] = {};
  for (int i = 0; i < 2; ++i) {
    ids[i] = bus.subscribe([&, i](const std::vector<Event>&) {
      int expected = -1;
      if (first.compare_exchange_strong(expected, i)) {
        in_first.open();
        release.wait();
        return;
      }
      ++calls[i];
    });
  }
  bus.publish(make_event(EventType::queued, 1));
  ASSERT_TRUE(in_first.wait());
  const int other = 1 - first.load();
  bus.unsubscribe(ids[other]);  // the other one has not been called for this batch yet
  release.open();
  bus.flush();
  EXPECT_EQ(calls[other].load(), 0);
}

TEST(EventBus, HandlerMayUnsubscribeItself) {
  EventBus bus;
  std::atomic<int> calls{0};
  std::atomic<SubscriptionId> self{0};
  Gate subscribed;
  self = bus.subscribe([&](const std::vector<Event>&) {
    subscribed.wait();
    ++calls;
    bus.unsubscribe(self.load());
  });
  subscribed.open();
  bus.publish(make_event(EventType::queued, 1));
  bus.flush();
  bus.publish(make_event(EventType::queued, 2));
  bus.flush();
  EXPECT_EQ(calls.load(), 1);
}

TEST(EventBus, SubscriberThatThrowsIsKeptAndOthersStillReceive) {
  EventBus bus;
  std::atomic<int> thrower_calls{0};
  bus.subscribe([&](const std::vector<Event>&) {
    ++thrower_calls;
    throw std::runtime_error("subscriber failure on purpose");
  });
  bus.subscribe([&](const std::vector<Event>&) {
    ++thrower_calls;
    throw 42;  // not even a std::exception
  });
  Recorder rec;
  bus.subscribe(rec.handler());
  bus.publish(make_event(EventType::queued, 1));
  bus.flush();
  bus.publish(make_event(EventType::queued, 2));
  bus.flush();
  EXPECT_EQ(progress_values(rec.events()), (std::vector<int>{1, 2}));
  EXPECT_EQ(thrower_calls.load(), 4);
}

TEST(EventBus, FlushWaitsForEventsFromManyPublishers) {
  EventBus bus;
  std::atomic<int> received{0};
  bus.subscribe([&](const std::vector<Event>& batch) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    received += static_cast<int>(batch.size());
  });
  std::vector<std::thread> publishers;
  for (int t = 0; t < 4; ++t)
    publishers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) bus.publish(make_event(EventType::progress, i));
    });
  for (auto& p : publishers) p.join();
  bus.flush();
  EXPECT_EQ(received.load(), 8000);
}

TEST(EventBus, FlushFromInsideAHandlerReturns) {
  EventBus bus;
  std::atomic<int> calls{0};
  bus.subscribe([&](const std::vector<Event>&) {
    bus.flush();  // would wait on itself
    ++calls;
  });
  bus.publish(make_event(EventType::queued, 1));
  bus.flush();
  EXPECT_EQ(calls.load(), 1);
}

TEST(EventBus, FlushWithNothingPublishedReturns) {
  EventBus bus;
  bus.flush();
  bus.subscribe([](const std::vector<Event>&) {});
  bus.flush();
}

TEST(EventBus, StopDeliversPendingEventsThenStops) {
  EventBus bus;
  Gate in_handler, release;
  std::atomic<int> received{0};
  bus.subscribe([&](const std::vector<Event>& batch) {
    if (!in_handler.is_open()) {
      in_handler.open();
      release.wait();
    }
    received += static_cast<int>(batch.size());
  });
  bus.publish(make_event(EventType::queued, 0));
  ASSERT_TRUE(in_handler.wait());
  for (int i = 1; i <= 50; ++i) bus.publish(make_event(EventType::completed, i));
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    bus.stop();
    stopped = true;
  });
  // stop() cannot return while the delivery thread is still held in the handler.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(stopped.load());
  release.open();
  stopper.join();
  EXPECT_EQ(received.load(), 51);

  // After stop: publishing is ignored, flush and stop return at once.
  bus.publish(make_event(EventType::completed, 99));
  bus.flush();
  bus.stop();
  EXPECT_EQ(received.load(), 51);
}

TEST(EventBus, DestroyedWithEventsPendingDoesNotHang) {
  std::atomic<int> received{0};
  {
    EventBus bus;
    bus.subscribe([&](const std::vector<Event>& batch) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      received += static_cast<int>(batch.size());
    });
    for (int i = 0; i < 1000; ++i) bus.publish(make_event(EventType::progress, i));
  }
  EXPECT_EQ(received.load(), 1000);  // the destructor stops, and stop delivers what is queued
}

TEST(EventBus, FullQueueCoalescesProgressDropsLogLinesAndKeepsLifecycleEvents) {
  EventBus bus(4);
  Gate in_handler, release;
  Recorder rec;
  bus.subscribe([&](const std::vector<Event>& batch) {
    if (!in_handler.is_open()) {
      in_handler.open();
      release.wait();
    }
    rec.handler()(batch);
  });
  bus.publish(make_event(EventType::started, 0));
  ASSERT_TRUE(in_handler.wait());  // the queue is empty again and the delivery thread is held

  auto progress_of = [](const char* job, int n) {
    Event e = make_event(EventType::progress, n);
    e.job_id = job;
    return e;
  };
  for (int i = 1; i <= 10; ++i) bus.publish(progress_of("a", i));  // 4 fit, then coalesced
  EXPECT_EQ(bus.coalesced(), 6u);
  bus.publish(progress_of("b", 20));  // full, but b has none queued: it joins
  std::vector<Event> more;
  more.push_back(make_event(EventType::log, 30));  // dropped: full
  more.push_back(make_event(EventType::completed, 12));
  more.push_back(make_event(EventType::status_changed, 13));
  bus.publish(std::move(more));
  bus.publish(make_event(EventType::failed, 14));
  EXPECT_EQ(bus.dropped(), 1u);

  release.open();
  bus.flush();
  // a's latest (10) took the place of its last queued update (4).
  EXPECT_EQ(progress_values(rec.events()), (std::vector<int>{0, 1, 2, 3, 10, 20, 12, 13, 14}));

  // Once drained, progress events fit again.
  bus.publish(make_event(EventType::progress, 15));
  bus.flush();
  EXPECT_EQ(rec.events().back().progress, 15);
  EXPECT_EQ(bus.dropped(), 1u);
  EXPECT_EQ(bus.coalesced(), 6u);
}

TEST(EventBus, EventTypesHaveStableNames) {
  EXPECT_EQ(to_string(EventType::status_changed), "job-status-changed");
  EXPECT_EQ(to_string(EventType::queued), "job-queued");
  EXPECT_EQ(to_string(EventType::started), "job-started");
  EXPECT_EQ(to_string(EventType::progress), "job-progress");
  EXPECT_EQ(to_string(EventType::completed), "job-completed");
  EXPECT_EQ(to_string(EventType::failed), "job-failed");
  EXPECT_EQ(to_string(EventType::cancelled), "job-cancelled");
  EXPECT_EQ(to_string(EventType::timeout), "job-timeout");
  EXPECT_EQ(to_string(EventType::retry), "job-retry");
  EXPECT_EQ(to_string(EventType::created), "job-created");
  EXPECT_EQ(to_string(EventType::log), "job-log");
}
