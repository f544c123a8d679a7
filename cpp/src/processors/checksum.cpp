// "checksum": hashes files with OpenSSL's EVP digests and xxHash. One read buffer per job feeds
// every requested algorithm, so each file is read once; reads are large and hinted sequential so
// the kernel reads ahead while the hashes run.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
// xxHash's runtime dispatch picks the widest vector unit the CPU has (AVX2, AVX-512) for XXH3.
#include <xxh_x86dispatch.h>
#endif

#include "jobforge/processors.hpp"
#include "payload.hpp"

namespace jobforge {
namespace {

using payload::json;

constexpr int64_t kDefaultBufferSize = int64_t{1} << 20;

struct ChecksumOptions {
  std::vector<std::string> paths;
  std::vector<std::string> algorithms;
  int64_t buffer_size = kDefaultBufferSize;
  bool fail_on_error = false;
};

// Algorithm names as the payload gives them, and OpenSSL's name for the EVP ones.
struct AlgorithmName {
  const char* name;
  const char* evp;  // nullptr: xxHash
};
constexpr AlgorithmName kAlgorithms[] = {
    {"sha256", "SHA2-256"},     {"sha512", "SHA2-512"}, {"sha1", "SHA1"},    {"md5", "MD5"},
    {"blake2b", "BLAKE2B-512"}, {"xxh3", nullptr},      {"xxh128", nullptr}, {"xxh64", nullptr},
};

ChecksumOptions parse_checksum(const std::string& payload_json) {
  payload::Reader r("checksum", payload_json);
  r.only({"paths", "algorithms", "buffer_size", "on_error"});
  ChecksumOptions o;
  if (!r.has("paths")) r.fail("paths", "is required (a file or a list of files)", nullptr);
  o.paths = r.strings("paths", /*single_ok=*/true, /*allow_empty_list=*/true);
  o.algorithms = r.strings("algorithms", /*single_ok=*/true, /*allow_empty_list=*/false);
  if (o.algorithms.empty()) o.algorithms = {"sha256"};
  for (size_t i = 0; i < o.algorithms.size(); ++i) {
    bool known = false;
    for (const auto& a : kAlgorithms) known = known || o.algorithms[i] == a.name;
    if (!known) {
      std::string names;
      for (const auto& a : kAlgorithms) names += std::string(names.empty() ? "" : ", ") + a.name;
      r.fail("algorithms[" + std::to_string(i) + "]", "must be one of " + names,
             json(o.algorithms[i]));
    }
    for (size_t j = 0; j < i; ++j)
      if (o.algorithms[j] == o.algorithms[i])
        r.fail("algorithms[" + std::to_string(i) + "]", "is listed twice", json(o.algorithms[i]));
  }
  o.buffer_size = r.integer("buffer_size", kDefaultBufferSize, 4096, int64_t{64} << 20);
  o.fail_on_error = r.choice("on_error", "record", {"record", "fail"}) == "fail";
  return o;
}

std::string hex(const unsigned char* bytes, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}

// One algorithm's running state, reset per file.
class Hasher {
 public:
  virtual ~Hasher() = default;
  virtual void reset() = 0;
  virtual void update(const void* data, size_t n) = 0;
  virtual std::string hex_digest() = 0;
};

class EvpHasher final : public Hasher {
 public:
  explicit EvpHasher(const char* evp_name)
      : md_(EVP_MD_fetch(nullptr, evp_name, nullptr)), ctx_(EVP_MD_CTX_new()) {
    if (!md_ || !ctx_)
      throw ProcessorFailure(std::string("checksum: OpenSSL has no ") + evp_name, "");
  }
  ~EvpHasher() override {
    EVP_MD_CTX_free(ctx_);
    EVP_MD_free(md_);
  }
  void reset() override {
    if (EVP_DigestInit_ex2(ctx_, md_, nullptr) != 1)
      throw ProcessorFailure("checksum: EVP_DigestInit_ex2 failed", "");
  }
  void update(const void* data, size_t n) override { EVP_DigestUpdate(ctx_, data, n); }
  std::string hex_digest() override {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, out, &len);
    return hex(out, len);
  }

 private:
  EVP_MD* md_;
  EVP_MD_CTX* ctx_;
};

// xxHash digests in their canonical (big-endian) form, as xxhash's hexdigest() prints them.
class Xxh3Hasher final : public Hasher {
 public:
  explicit Xxh3Hasher(bool wide) : wide_(wide), state_(XXH3_createState()) {}
  ~Xxh3Hasher() override { XXH3_freeState(state_); }
  void reset() override {
    if (wide_)
      XXH3_128bits_reset(state_);
    else
      XXH3_64bits_reset(state_);
  }
  void update(const void* data, size_t n) override {
    if (wide_)
      XXH3_128bits_update(state_, data, n);
    else
      XXH3_64bits_update(state_, data, n);
  }
  std::string hex_digest() override {
    if (wide_) {
      XXH128_canonical_t c;
      XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state_));
      return hex(c.digest, sizeof c.digest);
    }
    XXH64_canonical_t c;
    XXH64_canonicalFromHash(&c, XXH3_64bits_digest(state_));
    return hex(c.digest, sizeof c.digest);
  }

 private:
  bool wide_;
  XXH3_state_t* state_;
};

class Xxh64Hasher final : public Hasher {
 public:
  Xxh64Hasher() : state_(XXH64_createState()) {}
  ~Xxh64Hasher() override { XXH64_freeState(state_); }
  void reset() override { XXH64_reset(state_, 0); }
  void update(const void* data, size_t n) override { XXH64_update(state_, data, n); }
  std::string hex_digest() override {
    XXH64_canonical_t c;
    XXH64_canonicalFromHash(&c, XXH64_digest(state_));
    return hex(c.digest, sizeof c.digest);
  }

 private:
  XXH64_state_t* state_;
};

std::unique_ptr<Hasher> make_hasher(const std::string& name) {
  for (const auto& a : kAlgorithms)
    if (name == a.name && a.evp) return std::make_unique<EvpHasher>(a.evp);
  if (name == "xxh3") return std::make_unique<Xxh3Hasher>(false);
  if (name == "xxh128") return std::make_unique<Xxh3Hasher>(true);
  return std::make_unique<Xxh64Hasher>();
}

// Closes a file descriptor on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// CPU time of this thread: the job's cost, apart from what other processes take of the machine.
double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// What a path is when it is not a regular file, for the error message.
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a named pipe (FIFO)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a file";
}

std::string not_regular(mode_t mode) {
  return std::string("not a regular file: ") + file_kind(mode);
}

// Opens a file to hash without ever blocking in open(2): O_NONBLOCK, so a FIFO put in place of
// the file after the caller's stat(2) (no writer: open would wait for ever) or a device does not
// hold the worker; the caller refuses anything fstat(2) does not call a regular file, and clears
// the flag for the reads. O_NOCTTY: a terminal never becomes ours.
int open_for_reading(const std::string& path) {
  constexpr int kFlags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  // O_NOATIME spares an inode write per file, but only the owner (or root) may ask for it.
  int fd = ::open(path.c_str(), kFlags | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = ::open(path.c_str(), kFlags);
  return fd;
}

class ChecksumProcessor final : public Processor {
 public:
  void validate(const std::string& payload_json) const override { parse_checksum(payload_json); }

  std::string run(Context& ctx, const std::string& payload_json) override {
    const ChecksumOptions o = payload::read_or_fail([&] { return parse_checksum(payload_json); });
    std::vector<std::unique_ptr<Hasher>> hashers;
    for (const auto& name : o.algorithms) hashers.push_back(make_hasher(name));

    // Sizes first, so progress can be given in bytes of a known total.
    ctx.stage("sizing", static_cast<double>(o.paths.size()));
    std::vector<int64_t> sizes(o.paths.size(), -1);
    int64_t total_bytes = 0;
    for (size_t i = 0; i < o.paths.size(); ++i) {
      struct stat st {};
      if (::stat(o.paths[i].c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        sizes[i] = st.st_size;
        total_bytes += st.st_size;
      }
      if ((i & 1023) == 0) ctx.check_cancelled();
    }

    ctx.stage("hashing", static_cast<double>(total_bytes));
    std::unique_ptr<char[]> buffer(new char[static_cast<size_t>(o.buffer_size)]);
    json files = json::array();
    int64_t done_bytes = 0, hashed = 0, errors = 0;
    const auto started = std::chrono::steady_clock::now();
    const double cpu_started = thread_cpu_seconds();
    for (size_t i = 0; i < o.paths.size(); ++i) {
      ctx.check_cancelled();
      const std::string& path = o.paths[i];
      json entry = {{"path", path}};
      std::string error;
      int64_t size = 0;
      // Only regular files are opened: opening a FIFO blocks until a writer comes, a socket
      // cannot be opened, a device may never end. Checked again on the descriptor (the path may
      // have been replaced meanwhile).
      struct stat st {};
      Fd file;
      if (::stat(path.c_str(), &st) != 0) {
        error = std::string("open: ") + std::strerror(errno);
      } else if (!S_ISREG(st.st_mode)) {
        error = not_regular(st.st_mode);
      } else if ((file.fd = open_for_reading(path)) < 0) {
        error = std::string("open: ") + std::strerror(errno);
      } else if (::fstat(file.fd, &st) != 0) {
        error = std::string("stat: ") + std::strerror(errno);
      } else if (!S_ISREG(st.st_mode)) {
        error = not_regular(st.st_mode);
      } else if (::fcntl(file.fd, F_SETFL, ::fcntl(file.fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        // A regular file: plain blocking reads (a network or FUSE file system might otherwise
        // answer EAGAIN).
        error = std::string("fcntl: ") + std::strerror(errno);
      } else {
        // Wider readahead for files of several reads; a small file is one read anyway.
        if (st.st_size > o.buffer_size) ::posix_fadvise(file.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        for (auto& h : hashers) h->reset();
        for (;;) {
          const ssize_t n = ::read(file.fd, buffer.get(), static_cast<size_t>(o.buffer_size));
          if (n < 0) {
            if (errno == EINTR) continue;
            error = std::string("read: ") + std::strerror(errno);
            break;
          }
          if (n == 0) break;
          for (auto& h : hashers) h->update(buffer.get(), static_cast<size_t>(n));
          size += n;
          done_bytes += n;
          ctx.progress(static_cast<double>(done_bytes), static_cast<double>(total_bytes));
          ctx.check_cancelled();
        }
      }
      if (error.empty()) {
        entry["size"] = size;
        for (size_t a = 0; a < hashers.size(); ++a)
          entry[o.algorithms[a]] = hashers[a]->hex_digest();
        ++hashed;
      } else {
        ++errors;
        ctx.log(LogLevel::warning, "checksum: " + error, payload::dump({{"path", path}}));
        ctx.count("errors");
        if (o.fail_on_error)
          throw ProcessorFailure(
              "checksum: cannot hash " + payload::dump(json(path)) + ": " + error, "");
        entry["error"] = error;
      }
      files.push_back(std::move(entry));
      ctx.progress(static_cast<double>(done_bytes),
                   static_cast<double>(std::max(total_bytes, done_bytes)),
                   std::to_string(i + 1) + "/" + std::to_string(o.paths.size()) + " files");
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double cpu_seconds = thread_cpu_seconds() - cpu_started;
    ctx.count("files", hashed);
    ctx.count("bytes", done_bytes);
    json result = {
        {"files", std::move(files)},
        {"algorithms", o.algorithms},
        {"hashed", hashed},
        {"errors", errors},
        {"bytes", done_bytes},
        {"seconds", seconds},
        {"cpu_seconds", cpu_seconds},
        {"mb_per_s", seconds > 0 ? static_cast<double>(done_bytes) / 1e6 / seconds : 0.0}};
    return payload::dump(result);
  }
};

}  // namespace

std::shared_ptr<Processor> make_checksum_processor() {
  return std::make_shared<ChecksumProcessor>();
}

}  // namespace jobforge
