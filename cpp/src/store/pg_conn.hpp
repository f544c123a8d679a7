// Thin RAII wrappers over libpq: a Connection owns a PGconn, a Result a PGresult, a Transaction
// rolls back unless committed. Every failure is a PgError (a StoreError) carrying the SQLSTATE and
// libpq's message, and says whether the connection itself was lost (then the caller reconnects).
#pragma once

#include <libpq-fe.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "jobforge/errors.hpp"

namespace jobforge::pg {

// StoreError codes of the PostgreSQL store (SQLite's are its own result codes, all below 1000).
inline constexpr int kPgErrorCode = 1000;       // a statement failed
inline constexpr int kPgConnectionLost = 1001;  // the connection is gone: reconnect and retry

class PgError : public StoreError {
 public:
  PgError(int code, std::string sqlstate, const std::string& message)
      : StoreError(code, message), sqlstate_(std::move(sqlstate)) {}
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  bool connection_lost() const noexcept { return code() == kPgConnectionLost; }
  // The server is out of a resource (disk full, out of memory): the same write succeeds later.
  bool resources_exhausted() const noexcept { return sqlstate_ == "53100" || sqlstate_ == "53200"; }
  // A retry of the whole transaction may succeed: deadlock, serialization failure, the
  // connection (or the server) went away, or the server ran out of disk or memory.
  bool transient() const noexcept {
    return connection_lost() || sqlstate_ == "40001" || sqlstate_ == "40P01" ||
           sqlstate_.rfind("08", 0) == 0 || sqlstate_ == "57P01" || sqlstate_ == "57P02" ||
           sqlstate_ == "57P03" || resources_exhausted();
  }

 private:
  std::string sqlstate_;
};

class Result {
 public:
  Result() = default;
  explicit Result(PGresult* r) noexcept : r_(r) {}
  ~Result() {
    if (r_) PQclear(r_);
  }
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Result& operator=(Result&& o) noexcept {
    if (this != &o) {
      if (r_) PQclear(r_);
      r_ = o.r_;
      o.r_ = nullptr;
    }
    return *this;
  }
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;

  int rows() const noexcept { return r_ ? PQntuples(r_) : 0; }
  bool is_null(int row, int col) const noexcept { return PQgetisnull(r_, row, col); }
  std::string text(int row, int col) const {
    return std::string(PQgetvalue(r_, row, col), PQgetlength(r_, row, col));
  }
  std::optional<std::string> optional_text(int row, int col) const {
    if (is_null(row, col)) return std::nullopt;
    return text(row, col);
  }
  int64_t integer(int row, int col) const;  // NULL reads as 0
  double real(int row, int col) const;      // NULL reads as 0
  bool boolean(int row, int col) const {
    return !is_null(row, col) && PQgetvalue(r_, row, col)[0] == 't';
  }
  int64_t affected() const;  // rows changed by an INSERT/UPDATE/DELETE

 private:
  PGresult* r_ = nullptr;
};

// Statement parameters in text form; std::nullopt is SQL NULL.
class Params {
 public:
  Params& add(std::string_view v) {
    values_.emplace_back(std::string(v));
    return *this;
  }
  Params& add(const char* v) { return add(std::string_view(v)); }
  Params& add(const std::string& v) { return add(std::string_view(v)); }
  Params& add(const std::optional<std::string>& v) {
    values_.push_back(v);
    return *this;
  }
  Params& add(int64_t v) { return add(std::to_string(v)); }
  Params& add(int v) { return add(static_cast<int64_t>(v)); }
  Params& add(bool v) { return add(v ? "true" : "false"); }
  Params& add(double v);
  Params& null() {
    values_.emplace_back(std::nullopt);
    return *this;
  }
  size_t size() const noexcept { return values_.size(); }
  const std::optional<std::string>& operator[](size_t i) const { return values_[i]; }

 private:
  std::vector<std::optional<std::string>> values_;
};

// A PostgreSQL text array literal ('{"a","b"}') for `= ANY($n::text[])`.
std::string text_array(const std::vector<std::string>& values);

// `message` with every secret of `url` (the URL itself, its passwords, raw and percent-decoded)
// replaced by its redacted form: libpq quotes parts of a URL it cannot parse.
std::string scrub_secrets(std::string message, const std::string& url);

class Connection {
 public:
  // Connects (blocking, with the URL's connect_timeout or `connect_timeout_s`). Throws PgError.
  Connection(const std::string& url, int connect_timeout_s);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  PGconn* handle() const noexcept { return conn_; }
  bool ok() const noexcept { return conn_ && PQstatus(conn_) == CONNECTION_OK; }
  // Runs a statement (or several, without params) and returns its result; throws PgError.
  Result exec(std::string_view sql);
  Result exec(std::string_view sql, const Params& params);
  // Notifications received so far (after reading the socket with consume_input()).
  bool consume_input();
  std::vector<std::pair<std::string, std::string>> notifications();
  int socket() const noexcept { return PQsocket(conn_); }

 private:
  [[noreturn]] void fail(PGresult* r, std::string_view sql);
  PGconn* conn_ = nullptr;
};

// BEGIN on construction; ROLLBACK on destruction unless commit() succeeded.
class Transaction {
 public:
  explicit Transaction(Connection& c) : c_(c) { c_.exec("BEGIN"); }
  ~Transaction() {
    if (!done_ && c_.ok()) {
      try {
        c_.exec("ROLLBACK");
      } catch (...) {
      }
    }
  }
  void commit() {
    c_.exec("COMMIT");
    done_ = true;
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

 private:
  Connection& c_;
  bool done_ = false;
};

// Quotes a string as a JSON string (for jsonb_to_recordset batches).
void append_json_string(std::string& out, std::string_view s);

}  // namespace jobforge::pg
