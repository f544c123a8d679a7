// jobforge errors: one exception type per kind of failure a caller can act on.
// Validation errors name the field and the value; store errors carry the backend's code and message.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace jobforge {

// Base of every error jobforge raises on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad input from the caller (field, rule, value in the message). Nothing was written.
class ValidationError : public Error {
 public:
  ValidationError(std::string field, const std::string& message)
      : Error(message), field_(std::move(field)) {}
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

// enqueue of a type that has no processor (and the engine does not allow unknown types).
class UnknownJobType : public ValidationError {
 public:
  explicit UnknownJobType(const std::string& type)
      : ValidationError(
            "type", type == "exec"
                        ? "unknown job type 'exec': the exec processor runs commands and "
                          "is off unless the application opts in with "
                          "Engine(..., allow_exec=True) or `jobforge worker "
                          "--allow-exec` (docs/security.md)"
                        : "unknown job type '" + type +
                              "': no processor is registered for it and no worker publishes it") {}
};

// A singleton role is already held by another live worker.
class SingletonTaken : public Error {
 public:
  using Error::Error;
};

// A status change the lifecycle does not allow.
class InvalidTransition : public Error {
 public:
  using Error::Error;
};

// enqueue into a queue that holds max_queue_size queued jobs already. Nothing was written.
class QueueFull : public Error {
 public:
  QueueFull(std::string queue, int64_t limit)
      : Error("queue '" + queue + "' is full: it holds " + std::to_string(limit) +
              " queued jobs (max_queue_size=" + std::to_string(limit) + ")"),
        queue_(std::move(queue)) {}
  const std::string& queue() const noexcept { return queue_; }

 private:
  std::string queue_;
};

// The store failed (I/O, corrupt file, not a database, locked past the retry budget).
class StoreError : public Error {
 public:
  StoreError(int code, const std::string& message) : Error(message), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// Thrown inside a processor (by Context::check_cancelled) when the job was cancelled or timed out.
class JobCancelled : public Error {
 public:
  JobCancelled() : Error("job was cancelled") {}
  explicit JobCancelled(const std::string& why) : Error(why) {}
};

// Thrown by a processor to fail the attempt with a message and a detail (e.g. a traceback).
// permanent = true fails the job without further attempts; retry_after_ms >= 0 asks for the
// next attempt after that delay instead of the job's backoff.
class ProcessorFailure : public Error {
 public:
  ProcessorFailure(const std::string& message, std::string detail, bool permanent = false,
                   int64_t retry_after_ms = -1)
      : Error(message), detail_(std::move(detail)), permanent_(permanent),
        retry_after_ms_(retry_after_ms) {}
  const std::string& detail() const noexcept { return detail_; }
  bool permanent() const noexcept { return permanent_; }
  int64_t retry_after_ms() const noexcept { return retry_after_ms_; }

 private:
  std::string detail_;
  bool permanent_;
  int64_t retry_after_ms_;
};

}  // namespace jobforge
