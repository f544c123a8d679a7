// Thin RAII wrappers over sqlite3 (in the manner of SQLiteCpp): a Database owns a connection, a
// Statement a prepared statement, a Transaction rolls back unless committed. Every failure is a
// StoreError carrying SQLite's code and message.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "jobforge/errors.hpp"

namespace jobforge::sqlite {

[[noreturn]] void throw_error(sqlite3* db, int code, std::string_view context);

// Held around every stretch of work that takes SQLite file locks (a transaction, a read, a
// checkpoint). fork() waits until none is held (a pthread_atfork handler, see sqlite_db.cpp):
// SQLite keeps a process's WAL locks in per-process bookkeeping, which a child inherits; a lock
// held at the fork would stay "held by another connection of this process" there forever, and
// a connection the child opens on the file could never write. Nests within one thread.
class ForkShield {
 public:
  ForkShield();
  ~ForkShield();
  ForkShield(ForkShield&& other) noexcept : held_(other.held_) { other.held_ = false; }
  ForkShield(const ForkShield&) = delete;
  ForkShield& operator=(const ForkShield&) = delete;
  ForkShield& operator=(ForkShield&&) = delete;

 private:
  bool held_ = true;
};

class Database {
 public:
  Database(const std::string& path, int flags, int busy_timeout_ms);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  sqlite3* handle() const noexcept { return db_; }
  void exec(const char* sql);
  int64_t changes() const noexcept { return sqlite3_changes64(db_); }
  int64_t last_insert_rowid() const noexcept { return sqlite3_last_insert_rowid(db_); }
  // One integer from a single-row query (e.g. a PRAGMA).
  int64_t query_int(const char* sql);

 private:
  // SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 … ms between tries: far longer than
  // a jobforge transaction holds the write lock (about a millisecond), so processes sharing a
  // file idled behind each other. Ours sleeps 50 µs, doubling to at most 1 ms, until the timeout.
  static int on_busy(void* self, int tries);

  sqlite3* db_ = nullptr;
  int busy_timeout_ms_ = 0;
  std::chrono::steady_clock::time_point busy_since_{};
};

class Statement {
 public:
  Statement(Database& db, std::string_view sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, int64_t value);
  Statement& bind(int index, int value) { return bind(index, static_cast<int64_t>(value)); }
  Statement& bind(int index, double value);
  Statement& bind(int index, std::string_view value);  // copied by SQLite (SQLITE_TRANSIENT)
  Statement& bind(int index, const char* value) { return bind(index, std::string_view(value)); }
  Statement& bind(int index, const std::string& value) { return bind(index, std::string_view(value)); }
  Statement& bind(int index, const std::optional<std::string>& value);
  Statement& bind_null(int index);

  // true while a row is available.
  bool step();
  // Steps to completion, for statements that return no rows.
  void run();
  void reset() noexcept;

  bool is_null(int col) const noexcept { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t get_int(int col) const noexcept { return sqlite3_column_int64(stmt_, col); }
  double get_double(int col) const noexcept { return sqlite3_column_double(stmt_, col); }
  std::string get_text(int col) const;
  std::optional<std::string> get_optional_text(int col) const;

 private:
  Database& db_;
  sqlite3_stmt* stmt_ = nullptr;
};

// A cache of prepared statements for one connection, keyed by the SQL text's address (the named
// statements of sqlite_sql.hpp are constants, so each is prepared once per connection).
class StatementCache {
 public:
  explicit StatementCache(Database& db) : db_(db) {}
  Statement& get(const char* sql);
  // For SQL built at run time (e.g. an IN list); keyed by content.
  Statement& get_dynamic(const std::string& sql);
  void clear() noexcept {
    by_address_.clear();
    by_text_.clear();
  }

 private:
  Database& db_;
  std::unordered_map<const char*, std::unique_ptr<Statement>> by_address_;
  std::unordered_map<std::string, std::unique_ptr<Statement>> by_text_;
};

// Resets a statement when the scope ends, so a cached statement never stays mid-step.
class ScopedReset {
 public:
  explicit ScopedReset(Statement& s) : s_(s) {}
  ~ScopedReset() { s_.reset(); }
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;

 private:
  Statement& s_;
};

// BEGIN IMMEDIATE on construction; ROLLBACK on destruction unless commit() was called.
class Transaction {
 public:
  explicit Transaction(Database& db, bool immediate = true);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  bool done_ = false;
};

}  // namespace jobforge::sqlite
