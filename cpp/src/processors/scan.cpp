// "scan": walks directories with openat/fstatat (no path re-resolution below the roots) and
// reports the files it finds. An entry that cannot be read is logged and counted; the walk goes on.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "jobforge/processors.hpp"
#include "payload.hpp"

namespace jobforge {
namespace {

using payload::json;

enum class SymlinkPolicy { skip, files, follow };

struct ScanOptions {
  std::vector<std::string> roots;
  bool recursive = true;
  std::vector<std::string> extensions;  // lower case, no leading dot; empty: every file
  SymlinkPolicy symlinks = SymlinkPolicy::skip;
  bool include_hidden = false;
  bool list_files = true;
  int64_t max_errors_listed = 100;
};

ScanOptions parse_scan(const std::string& payload_json) {
  payload::Reader r("scan", payload_json);
  r.only({"paths", "recursive", "extensions", "symlinks", "hidden", "list_files"});
  ScanOptions o;
  if (!r.has("paths")) r.fail("paths", "is required (a directory or a list of them)", nullptr);
  o.roots = r.strings("paths", /*single_ok=*/true, /*allow_empty_list=*/false);
  o.recursive = r.boolean("recursive", true);
  for (std::string ext : r.strings("extensions", /*single_ok=*/true, /*allow_empty_list=*/true)) {
    if (ext.front() == '.') ext.erase(0, 1);
    if (ext.empty() || ext.find('/') != std::string::npos)
      r.fail("extensions", "must hold extensions such as \"jpg\" or \".tar.gz\"",
             r.doc()["extensions"]);
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    o.extensions.push_back("." + ext);
  }
  const std::string symlinks = r.choice("symlinks", "skip", {"skip", "files", "follow"});
  o.symlinks = symlinks == "skip"    ? SymlinkPolicy::skip
               : symlinks == "files" ? SymlinkPolicy::files
                                     : SymlinkPolicy::follow;
  o.include_hidden = r.choice("hidden", "skip", {"skip", "include"}) == "include";
  o.list_files = r.boolean("list_files", true);
  return o;
}

std::string join(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// An open directory: its descriptor, and the parent of the entries still to be opened below it
// (openat). Shared by those entries, so it stays open only while one of them waits: at most one
// per level of the walk.
class Directory {
 public:
  explicit Directory(DIR* d) : d_(d) {}
  ~Directory() { ::closedir(d_); }  // closes the descriptor
  Directory(const Directory&) = delete;
  Directory& operator=(const Directory&) = delete;
  int fd() const { return ::dirfd(d_); }

 private:
  DIR* d_;
};

// A directory to walk: a root (no parent: opened by its path) or a name inside `parent`.
struct Pending {
  std::shared_ptr<Directory> parent;
  std::string name;
  std::string path;  // as reported: the root as given joined with the names below it
};

class Walker {
 public:
  Walker(Context& ctx, const ScanOptions& o) : ctx_(ctx), o_(o) {}

  void walk_root(size_t index) {
    std::string root = o_.roots[index];
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    struct stat st {};
    // A root is followed even when it is a symlink: the caller named it.
    if (::stat(root.c_str(), &st) != 0) {
      const int err = errno;
      if (err == ENOENT || err == ENOTDIR)
        throw ProcessorFailure("scan: payload field 'paths[" + std::to_string(index) + "]' names " +
                                   "a path that does not exist, got " + payload::dump(json(root)),
                               "", /*permanent=*/true);
      entry_error(root, "stat", err);
      return;
    }
    if (S_ISREG(st.st_mode)) {
      file_found(root, root.substr(root.rfind('/') + 1), st);
      report();
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      ++skipped_other_;
      return;
    }
    std::vector<Pending> stack{{nullptr, root, root}};
    while (!stack.empty()) {
      ctx_.check_cancelled();
      Pending next = std::move(stack.back());
      stack.pop_back();
      std::vector<Pending> subdirs = read_directory(next);
      // Pushed in reverse so that they are walked in name order.
      for (auto it = subdirs.rbegin(); it != subdirs.rend(); ++it) stack.push_back(std::move(*it));
      report();
    }
    report();
  }

  json result() const {
    json r = json::object();
    if (o_.list_files) r["files"] = files_;
    r["count"] = matched_;
    r["bytes"] = bytes_;
    r["directories"] = dirs_;
    r["files_seen"] = files_seen_;
    r["skipped"] = {{"hidden", skipped_hidden_},           {"symlinks", skipped_symlinks_},
                    {"extension", skipped_extension_},     {"other", skipped_other_},
                    {"broken_symlinks", broken_symlinks_}, {"loops", loops_}};
    r["errors"] = errors_;
    r["error_samples"] = error_samples_;
    return r;
  }

  void count_totals() {
    ctx_.count("files", matched_);
    ctx_.count("bytes", bytes_);
    ctx_.count("directories", dirs_);
  }

 private:
  // Opens a directory to walk. Below a root, by name inside its parent's descriptor (openat):
  // no path is resolved again, so a directory renamed or replaced by a symbolic link between its
  // listing and its walk cannot lead outside the root. O_NOFOLLOW unless links are followed;
  // O_DIRECTORY, so nothing else (a FIFO put there) is ever opened. -1 with errno on failure.
  int open_directory(const Pending& p) const {
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    if (!p.parent) return ::open(p.path.c_str(), kFlags);  // a root: named by the caller
    const int nofollow = o_.symlinks == SymlinkPolicy::follow ? 0 : O_NOFOLLOW;
    return ::openat(p.parent->fd(), p.name.c_str(), kFlags | nofollow);
  }

  // Lists one directory: files are reported, subdirectories returned (sorted by name).
  std::vector<Pending> read_directory(const Pending& p) {
    std::vector<Pending> subdirs;
    const std::string& dir = p.path;
    const int fd = open_directory(p);
    if (fd < 0) {
      const int err = errno;
      struct stat now {};
      if (p.parent && (err == ELOOP || err == ENOTDIR) &&
          ::fstatat(p.parent->fd(), p.name.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0) {
        // Listed as a directory, and something else now (a symbolic link, a file): not walked.
        entry_error(dir, "open directory", err,
                    S_ISLNK(now.st_mode)
                        ? "replaced by a symbolic link during the scan, not followed"
                        : "no longer a directory");
      } else {
        entry_error(dir, "open directory", err);
      }
      return subdirs;
    }
    struct stat self {};
    if (::fstat(fd, &self) != 0) {
      entry_error(dir, "stat", errno);
      ::close(fd);
      return subdirs;
    }
    // Only a followed link can lead back to a directory already walked; checked on the
    // directory actually opened. (A root named twice is walked twice, as asked.)
    if (!visited_.insert({self.st_dev, self.st_ino}).second && p.parent) {
      ++loops_;
      ctx_.log(LogLevel::warning, "scan: directory already walked (symbolic link loop)",
               payload::dump({{"path", dir}}));
      ::close(fd);
      return subdirs;
    }
    DIR* d = ::fdopendir(fd);
    if (!d) {
      entry_error(dir, "read directory", errno);
      ::close(fd);
      return subdirs;
    }
    auto here = std::make_shared<Directory>(d);
    ++dirs_;
    std::vector<std::string> names;
    errno = 0;
    while (dirent* e = ::readdir(d)) {
      const char* n = e->d_name;
      if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
      names.emplace_back(n);
      if ((names.size() & 4095) == 0) ctx_.check_cancelled();  // a huge directory
      errno = 0;
    }
    if (errno != 0) entry_error(dir, "read directory", errno);
    std::sort(names.begin(), names.end());
    for (std::string& name : names) {
      if (++entries_since_check_ >= 256) {
        entries_since_check_ = 0;
        ctx_.check_cancelled();
        report();
      }
      if (name[0] == '.' && !o_.include_hidden) {
        ++skipped_hidden_;
        continue;
      }
      struct stat st {};
      if (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        entry_error(join(dir, name), "stat", errno);
        continue;
      }
      std::string path = join(dir, name);
      if (S_ISLNK(st.st_mode)) {
        if (o_.symlinks == SymlinkPolicy::skip) {
          ++skipped_symlinks_;
          continue;
        }
        if (::fstatat(fd, name.c_str(), &st, 0) != 0) {
          const int err = errno;
          if (err == ENOENT || err == ELOOP) {
            ++broken_symlinks_;
            ctx_.log(LogLevel::warning, "scan: broken symbolic link",
                     payload::dump({{"path", path}, {"error", std::strerror(err)}}));
            ctx_.count("broken_symlinks");
          } else {
            entry_error(path, "stat", err);
          }
          continue;
        }
        if (S_ISDIR(st.st_mode) && o_.symlinks != SymlinkPolicy::follow) {
          ++skipped_symlinks_;
          continue;
        }
      }
      if (S_ISDIR(st.st_mode)) {
        if (!o_.recursive) continue;
        // A followed link back to a directory already walked: counted once, here.
        if (visited_.count({st.st_dev, st.st_ino})) {
          ++loops_;
          ctx_.log(LogLevel::warning, "scan: directory already walked (symbolic link loop)",
                   payload::dump({{"path", path}}));
          continue;
        }
        subdirs.push_back({here, std::move(name), std::move(path)});
      } else if (S_ISREG(st.st_mode)) {
        file_found(path, name, st);
      } else {
        ++skipped_other_;
      }
    }
    return subdirs;
  }

  void file_found(const std::string& path, const std::string& name, const struct stat& st) {
    ++files_seen_;
    if (!o_.extensions.empty()) {
      std::string lower = name;
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      bool match = false;
      for (const std::string& ext : o_.extensions)
        match = match || (lower.size() > ext.size() &&
                          lower.compare(lower.size() - ext.size(), ext.size(), ext) == 0);
      if (!match) {
        ++skipped_extension_;
        return;
      }
    }
    ++matched_;
    bytes_ += st.st_size;
    if (o_.list_files) {
      const double mtime =
          static_cast<double>(st.st_mtim.tv_sec) + static_cast<double>(st.st_mtim.tv_nsec) / 1e9;
      files_.push_back({{"path", path}, {"size", st.st_size}, {"mtime", mtime}});
    }
  }

  // A per-entry failure (permission denied, vanished meanwhile...): logged, counted, walked past.
  // `why`: what to say instead of strerror(err).
  void entry_error(const std::string& path, const char* what, int err, const char* why = nullptr) {
    ++errors_;
    const std::string because = why ? why : std::strerror(err);
    const std::string reason = std::string(what) + ": " + because;
    ctx_.log(LogLevel::warning, "scan: cannot " + std::string(what) + " (" + because + ")",
             payload::dump({{"path", path}, {"errno", err}}));
    ctx_.count(err == EACCES || err == EPERM ? "permission_errors" : "errors");
    if (static_cast<int64_t>(error_samples_.size()) < o_.max_errors_listed)
      error_samples_.push_back({{"path", path}, {"error", reason}});
  }

  void report() {
    ctx_.progress(
        static_cast<double>(files_seen_), 0,
        std::to_string(dirs_) + " directories, " + std::to_string(files_seen_) + " files");
  }

  Context& ctx_;
  const ScanOptions& o_;
  json files_ = json::array();
  json error_samples_ = json::array();
  std::set<std::pair<dev_t, ino_t>> visited_;
  int64_t dirs_ = 0, files_seen_ = 0, matched_ = 0, bytes_ = 0, errors_ = 0;
  int64_t skipped_hidden_ = 0, skipped_symlinks_ = 0, skipped_extension_ = 0, skipped_other_ = 0;
  int64_t broken_symlinks_ = 0, loops_ = 0;
  int entries_since_check_ = 0;
};

class ScanProcessor final : public Processor {
 public:
  void validate(const std::string& payload_json) const override { parse_scan(payload_json); }

  std::string run(Context& ctx, const std::string& payload_json) override {
    const ScanOptions o = payload::read_or_fail([&] { return parse_scan(payload_json); });
    ctx.stage("scanning");
    Walker walker(ctx, o);
    for (size_t i = 0; i < o.roots.size(); ++i) walker.walk_root(i);
    walker.count_totals();
    return payload::dump(walker.result());
  }
};

}  // namespace

std::shared_ptr<Processor> make_scan_processor() {
  return std::make_shared<ScanProcessor>();
}

}  // namespace jobforge
