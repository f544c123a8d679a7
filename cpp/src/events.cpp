#include "jobforge/events.hpp"

#include <cstdio>
#include <exception>

namespace jobforge {

std::string_view to_string(EventType t) noexcept {
  switch (t) {
    case EventType::status_changed: return "job-status-changed";
    case EventType::queued: return "job-queued";
    case EventType::started: return "job-started";
    case EventType::progress: return "job-progress";
    case EventType::completed: return "job-completed";
    case EventType::failed: return "job-failed";
    case EventType::cancelled: return "job-cancelled";
    case EventType::timeout: return "job-timeout";
    case EventType::retry: return "job-retry";
    case EventType::created: return "job-created";
    case EventType::log: return "job-log";
  }
  return "job-unknown";
}

EventBus::EventBus(size_t capacity) : capacity_(capacity) {
  thread_ = std::thread([this] { run(); });
  delivery_thread_id_ = thread_.get_id();
}

EventBus::~EventBus() { stop(); }

SubscriptionId EventBus::subscribe(EventBatchHandler handler) {
  auto sub = std::make_shared<Subscriber>();
  sub->handler = std::move(handler);
  std::lock_guard lock(mutex_);
  const SubscriptionId id = next_id_++;
  subscribers_.emplace(id, std::move(sub));
  subscriber_count_ = subscribers_.size();
  return id;
}

void EventBus::unsubscribe(SubscriptionId id) {
  std::shared_ptr<Subscriber> sub;
  {
    std::lock_guard lock(mutex_);
    auto it = subscribers_.find(id);
    if (it == subscribers_.end()) return;
    sub = it->second;
    subscribers_.erase(it);
    subscriber_count_ = subscribers_.size();
  }
  if (on_delivery_thread()) {
    sub->active = false;  // from inside a handler: `calling` may be held by this very thread
    return;
  }
  std::lock_guard calling(sub->calling);  // waits for a delivery in progress to end
  sub->active = false;
}

void EventBus::publish(Event event) {
  std::lock_guard lock(mutex_);
  if (exited_) return;
  push_locked(std::move(event));
  wake_.notify_one();
}

void EventBus::publish(std::vector<Event> events) {
  if (events.empty()) return;
  std::lock_guard lock(mutex_);
  if (exited_) return;
  for (auto& e : events) push_locked(std::move(e));
  wake_.notify_one();
}

// Past capacity, a progress event replaces its job's progress event still in the queue (the
// subscriber gets the latest state, in the earlier one's place), or joins the queue if there is
// none (at most one per job); a log line is dropped (it is in the store); lifecycle events are
// always kept.
void EventBus::push_locked(Event&& event) {
  const bool full = queue_.size() >= capacity_;
  if (event.type == EventType::progress) {
    auto it = queued_progress_.find(event.job_id);
    if (full && it != queued_progress_.end() && it->second >= popped_) {
      queue_[static_cast<size_t>(it->second - popped_)] = std::move(event);
      coalesced_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const uint64_t seq = popped_ + queue_.size();
    if (it != queued_progress_.end()) it->second = seq;
    else queued_progress_.emplace(event.job_id, seq);
  } else if (full && event.type == EventType::log) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  queue_.push_back(std::move(event));
  ++published_;
}

void EventBus::flush() {
  std::unique_lock lock(mutex_);
  if (std::this_thread::get_id() == delivery_thread_id_) return;  // would wait on itself
  const uint64_t target = published_;
  drained_.wait(lock, [&] { return delivered_ >= target || exited_; });
}

void EventBus::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
  }
  std::lock_guard join_lock(join_mutex_);
  if (thread_.joinable() && std::this_thread::get_id() != delivery_thread_id_) thread_.join();
}

bool EventBus::on_delivery_thread() const noexcept {
  return std::this_thread::get_id() == delivery_thread_id_;
}

void EventBus::run() {
  std::vector<Event> batch;
  std::vector<std::shared_ptr<Subscriber>> subs;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty() && stopping_) {
        exited_ = true;
        drained_.notify_all();
        return;
      }
      const size_t n = std::min<size_t>(queue_.size(), 4096);
      batch.clear();
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        Event& front = queue_.front();
        if (front.type == EventType::progress) {
          auto it = queued_progress_.find(front.job_id);
          if (it != queued_progress_.end() && it->second == popped_) queued_progress_.erase(it);
        }
        batch.push_back(std::move(front));
        queue_.pop_front();
        ++popped_;
      }
      subs.clear();
      for (auto& [id, sub] : subscribers_) subs.push_back(sub);
    }
    for (auto& sub : subs) {
      std::lock_guard calling(sub->calling);
      if (!sub->active) continue;
      try {
        sub->handler(batch);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "jobforge: event subscriber raised: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "jobforge: event subscriber raised an unknown exception\n");
      }
    }
    {
      std::lock_guard lock(mutex_);
      delivered_ += batch.size();
      drained_.notify_all();
    }
  }
}

}  // namespace jobforge
