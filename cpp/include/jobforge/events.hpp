// The event bus: lifecycle and progress events delivered to subscribers on one delivery thread,
// in batches, off the workers' path. Invariant: an event about a status is published only after
// that status is committed to the store.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "jobforge/job.hpp"
#include "jobforge/processor.hpp"

namespace jobforge {

enum class EventType : uint8_t {
  status_changed,  // every committed transition
  queued,
  started,
  progress,
  completed,
  failed,
  cancelled,
  timeout,
  retry,  // a failed attempt went back to queued
  created,  // a job was inserted (then job-queued)
  log,      // a line of a job's log was written
};
std::string_view to_string(EventType t) noexcept;  // "job-status-changed", "job-progress", ...

struct Event {
  EventType type = EventType::status_changed;
  std::string job_id;
  std::string job_type;
  Status status = Status::created;
  Status previous_status = Status::created;
  int progress = 0;
  double progress_current = 0;
  double progress_total = 0;
  std::string message;
  std::optional<std::string> result_json;
  std::optional<std::string> error;
  int attempt = 0;
  int64_t timestamp = 0;
  // Progress: the stage, rate (units/s) and estimated time left (-1: unknown).
  std::string stage;
  double rate = 0;
  int64_t eta_ms = -1;
  // Log lines (message is the line).
  LogLevel log_level = LogLevel::info;
  int64_t log_id = 0;
  std::string fields_json;
};

using EventBatchHandler = std::function<void(const std::vector<Event>&)>;
using SubscriptionId = uint64_t;

class EventBus {
 public:
  // capacity bounds the queue of a slow subscriber: past it, progress events are coalesced (one
  // per job, the latest), job-log events are dropped (the lines are in the store), and lifecycle
  // events are always kept.
  explicit EventBus(size_t capacity = 100'000);
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;

  SubscriptionId subscribe(EventBatchHandler handler);
  // After unsubscribe returns, the handler is not called again (unless called from inside it).
  void unsubscribe(SubscriptionId id);

  void publish(Event event);
  void publish(std::vector<Event> events);

  // Blocks until every event published so far has been delivered (or the bus is stopped).
  void flush();
  // Delivers what is queued, then stops the delivery thread.
  void stop();

  uint64_t dropped() const noexcept { return dropped_.load(); }      // log events
  uint64_t coalesced() const noexcept { return coalesced_.load(); }  // progress events
  size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }
  bool has_subscribers() const noexcept { return subscriber_count_.load() > 0; }
  bool on_delivery_thread() const noexcept;

 private:
  struct Subscriber {
    EventBatchHandler handler;
    std::mutex calling;  // held while the handler runs, so unsubscribe can wait it out
    bool active = true;  // guarded by `calling`
  };
  void run();
  void push_locked(Event&& event);  // caller holds mutex_

  size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable drained_;
  std::deque<Event> queue_;
  uint64_t published_ = 0, delivered_ = 0;
  bool stopping_ = false;
  bool exited_ = false;
  std::mutex join_mutex_;
  std::unordered_map<SubscriptionId, std::shared_ptr<Subscriber>> subscribers_;
  SubscriptionId next_id_ = 1;
  std::atomic<uint64_t> dropped_{0}, coalesced_{0};
  uint64_t popped_ = 0;  // events taken off the queue so far: queue_[i] is event popped_ + i
  std::unordered_map<std::string, uint64_t> queued_progress_;  // job -> its queued progress
  std::atomic<size_t> subscriber_count_{0};
  std::thread thread_;
  std::thread::id delivery_thread_id_;
};

}  // namespace jobforge
