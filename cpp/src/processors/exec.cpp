// "exec": runs a command in a process group of its own (posix_spawn, so no fork of a process
// that holds Python and SQLite), feeds its stdin, streams its output lines into the job's log and
// keeps their tails. Cancellation, timeout and shutdown end the whole group: SIGTERM, then
// SIGKILL after a grace period; the engine's interrupt hook sends SIGKILL at once if the loop
// itself is stuck.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "jobforge/processors.hpp"
#include "payload.hpp"

extern char** environ;

namespace jobforge {
namespace {

using payload::json;
using Clock = std::chrono::steady_clock;

struct ExecOptions {
  std::vector<std::string> argv;
  std::optional<std::string> cwd;
  std::map<std::string, std::string> env;
  std::optional<bool> inherit_env;  // absent: the processor's default
  std::optional<std::string> stdin_text;
  int64_t tail_lines = 20;
  int64_t max_log_lines = 10'000;
  double kill_grace_s = 2.0;
  bool check = true;
};

ExecOptions parse_exec(const std::string& payload_json) {
  payload::Reader r("exec", payload_json);
  r.only({"argv", "cwd", "env", "inherit_env", "stdin", "tail_lines", "max_log_lines", "kill_grace",
          "check"});
  ExecOptions o;
  if (!r.has("argv") || !r.doc()["argv"].is_array())
    r.fail("argv", "must be a non-empty list of strings (the program and its arguments)",
           r.has("argv") ? r.doc()["argv"] : json(nullptr));
  o.argv = r.strings("argv", /*single_ok=*/false, /*allow_empty_list=*/false);
  o.cwd = r.string("cwd");
  o.env = r.string_map("env");
  for (auto& [key, value] : o.env)
    if (key.empty() || key.find('=') != std::string::npos)
      r.fail("env", "must have names without '=' (got the name " + payload::dump(json(key)) + ")",
             r.doc()["env"]);
  if (r.has("inherit_env")) o.inherit_env = r.boolean("inherit_env", false);
  o.stdin_text = r.string("stdin", /*allow_empty=*/true, /*allow_nul=*/true);  // data, not a path
  o.tail_lines = r.integer("tail_lines", 20, 0, 10'000);
  o.max_log_lines = r.integer("max_log_lines", 10'000, 0, 100'000'000);
  o.kill_grace_s = r.number("kill_grace", 2.0, 0, 3600);
  o.check = r.boolean("check", true);
  return o;
}

// The variables a command gets when the environment is not inherited as a whole: enough to find
// programs and to speak the user's language, none of the secrets a host process may hold.
bool in_minimal_environment(std::string_view name) {
  static constexpr std::string_view kept[] = {"PATH", "HOME",     "USER", "LOGNAME", "SHELL",
                                              "LANG", "LANGUAGE", "TZ",   "TMPDIR"};
  for (auto k : kept)
    if (name == k) return true;
  return name.rfind("LC_", 0) == 0;
}

// Bytes that are not UTF-8 become U+FFFD, so a line can be logged and returned as JSON text.
std::string valid_utf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    const auto c = static_cast<unsigned char>(in[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= in.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(in[i + k]) >> 6) == 2;
    if (ok && len > 1) {
      // Overlong forms and surrogates are not UTF-8 either.
      const auto c1 = static_cast<unsigned char>(in[i + 1]);
      if ((len == 2 && c < 0xC2) || (len == 3 && c == 0xE0 && c1 < 0xA0) ||
          (len == 3 && c == 0xED && c1 >= 0xA0) || (len == 4 && c == 0xF0 && c1 < 0x90) ||
          (len == 4 && (c > 0xF4 || (c == 0xF4 && c1 >= 0x90))))
        ok = false;
    }
    if (ok) {
      out.append(in.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// One output stream of the child: split into lines, logged (up to a limit), tail kept.
class OutputStream {
 public:
  OutputStream(Context& ctx, const char* name, LogLevel level, const ExecOptions& o,
               int64_t& log_budget)
      : ctx_(ctx), name_(name), level_(level), o_(o), log_budget_(log_budget) {}

  // A line longer than this is logged in pieces.
  static constexpr size_t kMaxLine = 64 * 1024;

  void feed(const char* data, size_t n) {
    bytes_ += static_cast<int64_t>(n);
    partial_.append(data, n);
    size_t start = 0;
    for (;;) {
      const size_t nl = partial_.find('\n', start);
      if (nl == std::string::npos) break;
      line(std::string_view(partial_).substr(start, nl - start));
      start = nl + 1;
    }
    partial_.erase(0, start);
    while (partial_.size() >= kMaxLine) {
      line(std::string_view(partial_).substr(0, kMaxLine));
      partial_.erase(0, kMaxLine);
    }
  }

  void finish() {
    if (!partial_.empty()) line(partial_);
    partial_.clear();
  }

  std::string tail() const {
    std::string out;
    for (const auto& l : tail_) out += l + "\n";
    return out;
  }
  int64_t lines() const { return lines_; }
  int64_t bytes() const { return bytes_; }

 private:
  void line(std::string_view raw) {
    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    std::string text = valid_utf8(raw);
    ++lines_;
    if (log_budget_ > 0) {
      --log_budget_;
      ctx_.log(level_, text, json{{"stream", name_}}.dump());
    } else {
      ctx_.count("log_lines_dropped");
    }
    if (o_.tail_lines > 0) {
      tail_.push_back(std::move(text));
      if (static_cast<int64_t>(tail_.size()) > o_.tail_lines) tail_.pop_front();
    }
  }

  Context& ctx_;
  const char* name_;
  LogLevel level_;
  const ExecOptions& o_;
  int64_t& log_budget_;
  std::string partial_;
  std::deque<std::string> tail_;
  int64_t lines_ = 0, bytes_ = 0;
};

struct Pipe {
  int read = -1, write = -1;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      throw ProcessorFailure(std::string("exec: pipe: ") + std::strerror(errno), "");
    read = fds[0];
    write = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (read >= 0) ::close(read);
    read = -1;
  }
  void close_write() {
    if (write >= 0) ::close(write);
    write = -1;
  }
};

// posix_spawn's attribute and file-action objects, destroyed on every path out.
struct SpawnSetup {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  SpawnSetup() {
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
};

class ExecProcessor final : public Processor {
 public:
  explicit ExecProcessor(bool inherit_env) : inherit_env_(inherit_env) {}

  void validate(const std::string& payload_json) const override { parse_exec(payload_json); }

  // The run loop polls ctx.cancelled() every 50 ms and ends the group itself; this hook is the
  // fallback for a loop that is stuck (e.g. waiting for log space): SIGKILL to the group.
  void interrupt(Context& ctx) override {
    std::lock_guard lock(groups_mutex_);
    auto it = groups_.find(&ctx);
    if (it != groups_.end() && !it->second.terminating) ::kill(-it->second.pgid, SIGKILL);
  }

  std::string run(Context& ctx, const std::string& payload_json) override {
    const ExecOptions o = payload::read_or_fail([&] { return parse_exec(payload_json); });
    const auto started = Clock::now();

    Pipe out, err, in;
    SpawnSetup setup;
    // Its own process group (to signal the whole tree), default signal dispositions (Python
    // ignores SIGPIPE, and ignored signals survive exec) and an empty signal mask.
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setflags(
        &setup.attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setpgroup(&setup.attr, 0);
    posix_spawnattr_setsigdefault(&setup.attr, &all);
    posix_spawnattr_setsigmask(&setup.attr, &none);
    if (o.stdin_text) {
      posix_spawn_file_actions_adddup2(&setup.actions, in.read, STDIN_FILENO);
    } else {
      posix_spawn_file_actions_addopen(&setup.actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    }
    posix_spawn_file_actions_adddup2(&setup.actions, out.write, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&setup.actions, err.write, STDERR_FILENO);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    // Descriptors the host process left inheritable do not leak into the command.
    posix_spawn_file_actions_addclosefrom_np(&setup.actions, 3);
#endif
    if (o.cwd) posix_spawn_file_actions_addchdir_np(&setup.actions, o.cwd->c_str());

    std::vector<std::string> env_strings;
    const bool inherit_all = o.inherit_env.value_or(inherit_env_);
    if (o.inherit_env.value_or(true))
      for (char** e = environ; e && *e; ++e) {
        std::string_view kv(*e);
        const auto eq = kv.find('=');
        if (eq == std::string_view::npos || o.env.count(std::string(kv.substr(0, eq)))) continue;
        if (!inherit_all && !in_minimal_environment(kv.substr(0, eq))) continue;
        env_strings.emplace_back(kv);
      }
    for (auto& [key, value] : o.env) env_strings.push_back(key + "=" + value);
    std::vector<char*> envp, argv;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_strings = o.argv;
    for (auto& s : argv_strings) argv.push_back(s.data());
    argv.push_back(nullptr);

    pid_t pid = -1;
    const int rc =
        ::posix_spawnp(&pid, argv[0], &setup.actions, &setup.attr, argv.data(), envp.data());
    if (rc != 0) {
      // The program or the directory does not exist or is not allowed: the same payload would
      // fail every attempt.
      const bool permanent = rc == ENOENT || rc == EACCES || rc == ENOTDIR || rc == ENOEXEC;
      if (o.cwd && ::access(o.cwd->c_str(), X_OK) != 0)
        throw ProcessorFailure("exec: payload field 'cwd' " + payload::dump(json(*o.cwd)) +
                                   " cannot be entered: " + std::strerror(rc),
                               "", permanent);
      throw ProcessorFailure("exec: payload field 'argv[0]' " + payload::dump(json(o.argv[0])) +
                                 " cannot be run: " + std::strerror(rc),
                             "", permanent);
    }
    {
      std::lock_guard lock(groups_mutex_);
      groups_[&ctx] = Group{pid, false};
    }
    out.close_write();
    err.close_write();
    in.close_read();
    if (!o.stdin_text) in.close_write();
    ctx.log(LogLevel::info, "exec: started " + payload::dump(json(o.argv)),
            json{{"pid", pid}}.dump());

    int64_t log_budget = o.max_log_lines;
    OutputStream stdout_stream(ctx, "stdout", LogLevel::info, o, log_budget);
    OutputStream stderr_stream(ctx, "stderr", LogLevel::warning, o, log_budget);
    size_t stdin_written = 0;
    if (in.write >= 0) ::fcntl(in.write, F_SETFL, O_NONBLOCK);

    int status = 0;
    bool status_known = true;
    bool reaped = false;
    StopReason stopped = StopReason::none;
    Clock::time_point kill_at = Clock::time_point::max();
    Clock::time_point drain_until = Clock::time_point::max();
    std::vector<char> buf(64 * 1024);
    // Until both pipes reach EOF and the leader is reaped. Once the leader exits, what is left of
    // its group is killed, so a stray background child cannot hold the pipes open.
    while (out.read >= 0 || err.read >= 0 || !reaped) {
      if (stopped == StopReason::none && ctx.cancelled()) {
        stopped = ctx.stop_reason();
        {
          std::lock_guard lock(groups_mutex_);
          groups_[&ctx].terminating = true;
        }
        ::kill(-pid, SIGTERM);
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o.kill_grace_s));
        ctx.log(LogLevel::warning, "exec: stopping the process group (SIGTERM)",
                json{{"pid", pid}}.dump());
      }
      if (Clock::now() >= kill_at) {
        ::kill(-pid, SIGKILL);
        kill_at = Clock::time_point::max();
        ctx.log(LogLevel::warning, "exec: the process group outlived its grace period (SIGKILL)",
                json{{"pid", pid}}.dump());
      }
      pollfd fds[3];
      nfds_t n = 0;
      if (out.read >= 0) fds[n++] = {out.read, POLLIN, 0};
      if (err.read >= 0) fds[n++] = {err.read, POLLIN, 0};
      if (in.write >= 0) fds[n++] = {in.write, POLLOUT, 0};
      ::poll(fds, n, n ? 50 : 0);
      for (nfds_t i = 0; i < n; ++i) {
        if (!fds[i].revents) continue;
        if (fds[i].fd == in.write) {
          const std::string& data = *o.stdin_text;
          if (fds[i].revents & (POLLERR | POLLHUP)) {
            in.close_write();  // the command closed its stdin
            continue;
          }
          const ssize_t w =
              ::write(in.write, data.data() + stdin_written, data.size() - stdin_written);
          if (w > 0) stdin_written += static_cast<size_t>(w);
          if ((w < 0 && errno != EAGAIN && errno != EINTR) || stdin_written == data.size())
            in.close_write();
          continue;
        }
        const bool is_out = fds[i].fd == out.read;
        const ssize_t r = ::read(fds[i].fd, buf.data(), buf.size());
        if (r > 0) {
          (is_out ? stdout_stream : stderr_stream).feed(buf.data(), static_cast<size_t>(r));
        } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
          (is_out ? out : err).close_read();
        }
      }
      if (!reaped) {
        // Seen exited but not reaped yet: the zombie leader keeps the group id reserved while
        // the rest of its group is killed, so the signal cannot reach a stranger's group.
        siginfo_t info{};
        const int waited =
            ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        // ECHILD: someone else reaped it (SIGCHLD set to SIG_IGN in the host process).
        const bool lost = waited != 0 && errno == ECHILD;
        if (lost || (waited == 0 && info.si_pid == pid)) {
          {
            std::lock_guard lock(groups_mutex_);
            groups_.erase(&ctx);
          }
          if (lost) {
            status_known = false;
          } else {
            ::kill(-pid, SIGKILL);  // whatever the leader left behind in its group
            ::waitpid(pid, &status, 0);
          }
          reaped = true;
          drain_until = Clock::now() + std::chrono::seconds(1);
        } else if (n == 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      } else if (Clock::now() >= drain_until) {
        // A process that left the group (setsid) still holds the pipes: stop reading them.
        out.close_read();
        err.close_read();
      }
    }
    stdout_stream.finish();
    stderr_stream.finish();
    {
      std::lock_guard lock(groups_mutex_);
      groups_.erase(&ctx);
    }

    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    json result = {{"argv", o.argv},
                   {"pid", pid},
                   {"seconds", seconds},
                   {"stdout_tail", stdout_stream.tail()},
                   {"stderr_tail", stderr_stream.tail()},
                   {"stdout_lines", stdout_stream.lines()},
                   {"stderr_lines", stderr_stream.lines()},
                   {"stdout_bytes", stdout_stream.bytes()},
                   {"stderr_bytes", stderr_stream.bytes()}};
    std::string ended;
    if (!status_known) {
      if (stopped != StopReason::none) ctx.check_cancelled();
      throw ProcessorFailure("exec: the exit status of " + payload::dump(json(o.argv[0])) +
                                 " was taken by another waiter (is SIGCHLD ignored?)",
                             "");
    }
    if (WIFEXITED(status)) {
      result["exit_code"] = WEXITSTATUS(status);
      result["signal"] = nullptr;
      ended = "exited with code " + std::to_string(WEXITSTATUS(status));
    } else {
      const int sig = WTERMSIG(status);
      result["exit_code"] = -sig;
      result["signal"] = signal_name(sig);
      ended = "was killed by " + signal_name(sig);
    }
    ctx.log(LogLevel::info, "exec: " + o.argv[0] + " " + ended, json{{"pid", pid}}.dump());
    if (stopped != StopReason::none) ctx.check_cancelled();  // ends it cancelled / timeout
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && o.check) {
      std::string detail = "exit: " + ended + "\n";
      if (!stderr_stream.tail().empty())
        detail += "--- stderr (last lines) ---\n" + stderr_stream.tail();
      if (!stdout_stream.tail().empty())
        detail += "--- stdout (last lines) ---\n" + stdout_stream.tail();
      throw ProcessorFailure("exec: " + payload::dump(json(o.argv[0])) + " " + ended, detail);
    }
    return payload::dump(result);
  }

 private:
  struct Group {
    pid_t pgid = -1;
    bool terminating = false;  // the run loop is ending it (SIGTERM sent, grace running)
  };
  const bool inherit_env_;  // the default of the payload's inherit_env
  std::mutex groups_mutex_;
  std::unordered_map<Context*, Group> groups_;
};

}  // namespace

std::shared_ptr<Processor> make_exec_processor(bool inherit_env) {
  return std::make_shared<ExecProcessor>(inherit_env);
}

}  // namespace jobforge
