// End-to-end tests of the real `laneguard serve` binary (docs/serve.md): clients that die while
// holding a lease, thousands of parked waiters, bad requests at the process level, live reloads
// (PUT and SIGHUP) and the SIGTERM drain. The daemon is the built binary, started per test with
// its own config, Unix socket, log and spans file; nothing here links the server library, so what
// is checked is what a client in another language sees.
//
// Under a sanitizer (LANEGUARD_E2E_SANITIZER, set by CMake when LANEGUARD_SANITIZE is) the daemon
// is the instrumented binary: its RSS bound for 2,000 parked waiters is relaxed (shadow memory),
// waits and deadlines are longer, and one more thread (the sanitizer's) is within the bound.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "support/processes.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;
using laneguard::testing_support::ProcessDead;
using std::chrono::milliseconds;

#ifdef LANEGUARD_E2E_SANITIZER
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// Instrumented binaries start and answer several times slower.
constexpr milliseconds kReadyTimeout{kSanitized ? 60'000 : 20'000};

// strerror is not thread-safe; this is.
std::string ErrnoText() { return std::generic_category().message(errno); }

int64_t MsSince(SteadyClock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start).count();
}

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- raw HTTP/1.1
// ---------------------------------------------------------------------------------

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
};

// Parses one complete response (a Content-Length body, as the daemon always sends) at the start
// of `data`. Returns the bytes it took, 0 while incomplete.
size_t ParseResponse(std::string_view data, RawResponse* out) {
  const size_t head_end = data.find("\r\n\r\n");
  if (head_end == std::string_view::npos) return 0;
  RawResponse r;
  std::istringstream head{std::string(data.substr(0, head_end))};
  std::string line;
  std::getline(head, line);
  if (line.size() < 12 || !line.starts_with("HTTP/1.")) return 0;
  r.status = std::atoi(line.c_str() + 9);
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
  }
  const size_t length = std::strtoul(r.headers["content-length"].c_str(), nullptr, 10);
  const size_t total = head_end + 4 + length;
  if (data.size() < total) return 0;
  r.body = std::string(data.substr(head_end + 4, length));
  *out = std::move(r);
  return total;
}

int ConnectTcp(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `data` and reads one response, reading while it sends so a server that answers early
// (413 before the body) is heard. Bounded by `timeout`; nullopt if no complete response came.
std::optional<RawResponse> Exchange(int fd, std::string_view data, milliseconds timeout) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  const auto deadline = SteadyClock::now() + timeout;
  std::string in;
  char buf[16384];
  while (SteadyClock::now() < deadline) {
    pollfd p{fd, static_cast<int16_t>(POLLIN | (data.empty() ? 0 : POLLOUT)), 0};
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now());
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, left.count()))) <= 0) continue;
    if ((p.revents & POLLOUT) != 0) {
      const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) data.remove_prefix(static_cast<size_t>(n));
      if (n < 0 && errno != EAGAIN) data = {};  // the server closed: keep reading what it said
    }
    if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        in.append(buf, static_cast<size_t>(n));
        RawResponse r;
        if (ParseResponse(in, &r) > 0) return r;
      } else if (n == 0 || errno != EAGAIN) {
        return std::nullopt;
      }
    }
  }
  return std::nullopt;
}

std::string PostRequest(std::string_view path, std::string_view body) {
  return "POST " + std::string(path) +
         " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

// ---- the daemon
// ------------------------------------------------------------------------------------

// One `laneguard serve` process, stderr to a file; stopped (SIGTERM, then SIGKILL) when destroyed.
class Daemon {
 public:
  Daemon(fs::path dir, std::string name) : dir_(std::move(dir)), name_(std::move(name)) {}
  ~Daemon() { Stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Starts `serve --config <config> <extra...>` and waits for "laneguard serve: ready".
  ::testing::AssertionResult Start(const std::string& config,
                                   const std::vector<std::string>& extra) {
    std::vector<std::string> args = {LANEGUARD_CLI_PATH, "serve", "--config", config};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, Path("stdout").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, Path("stderr").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int spawned = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) return ::testing::AssertionFailure() << "posix_spawn: " << spawned;
    const auto start = SteadyClock::now();
    while (SteadyClock::now() - start < kReadyTimeout) {
      const std::string err = Stderr();
      if (err.find("laneguard serve: ready\n") != std::string::npos) {
        std::smatch m;
        if (!std::regex_search(err, m,
                               std::regex("listening on http://127\\.0\\.0\\.1:([0-9]+)"))) {
          return ::testing::AssertionFailure() << "no TCP endpoint in: " << err;
        }
        port_ = std::stoi(m[1]);
        return ::testing::AssertionSuccess();
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return ::testing::AssertionFailure() << "the daemon exited before ready: " << err;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    return ::testing::AssertionFailure()
           << "not ready within " << kReadyTimeout.count() << " ms: " << Stderr();
  }

  // SIGTERM (a drain), SIGINT if still draining after 300 ms (a second signal ends the drain),
  // SIGKILL if still running 10 s later. Returns the exit status (128+N for a signal).
  int Stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    std::optional<int> status = WaitExit(milliseconds(300));
    if (!status) {
      kill(pid_, SIGINT);
      status = WaitExit(milliseconds(10'000));
    }
    if (!status) {
      kill(pid_, SIGKILL);
      status = WaitExit(milliseconds(10'000));
    }
    return status.value_or(-1);
  }

  // Waits up to `timeout` for the daemon to exit; its status, or nullopt if it still runs.
  std::optional<int> WaitExit(milliseconds timeout) {
    if (pid_ <= 0) return exit_status_;
    const auto start = SteadyClock::now();
    do {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_status_;
      }
      std::this_thread::sleep_for(milliseconds(5));
    } while (SteadyClock::now() - start < timeout);
    return std::nullopt;
  }

  std::unique_ptr<httplib::Client> Client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    // Without it each small POST waits for the peer's delayed ACK (40 ms).
    c->set_tcp_nodelay(true);
    c->set_connection_timeout(5);
    c->set_read_timeout(kSanitized ? 60 : 20);
    c->set_write_timeout(10);
    return c;
  }

  std::string Path(const std::string& file) const { return (dir_ / (name_ + "." + file)).string(); }
  std::string Stderr() const { return Slurp(Path("stderr")); }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }

 private:
  fs::path dir_;
  std::string name_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_status_ = -1;
};

json BodyOf(const httplib::Result& r) {
  if (!r) return json();
  return json::parse(r->body, nullptr, false);
}

// The value of one Prometheus series (`name{labels}` exactly as exposed), if present.
std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(series + " "))
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
  }
  return std::nullopt;
}

// A field of /proc/<pid>/status ("VmRSS", "Threads") as its first number.
int64_t ProcStatus(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(field + ":")) return std::atoll(line.c_str() + field.size() + 1);
  }
  return -1;
}

std::string ThreadNames(pid_t pid) {
  std::string names;
  const fs::path tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& task : fs::directory_iterator(tasks, ec)) {
    std::string comm = Slurp(task.path() / "comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    names += (names.empty() ? "" : ", ") + comm;
  }
  return names;
}

// ---- the fixture
// -------------------------------------------------------------------------------------

class ServeDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short: a Unix socket path must fit in 108 bytes.
    std::string pattern = (fs::temp_directory_path() / "lg-e2e-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << ErrnoText();
    dir_ = pattern;
  }
  void TearDown() override {
    for (pid_t child : children_) {
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
    }
    for (const auto& daemon : daemons_) {
      EXPECT_EQ(daemon->Stop(), 0) << "the daemon's stderr:\n" << daemon->Stderr();
    }
    daemons_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string Socket() const { return (dir_ / "s.sock").string(); }

  // Starts a daemon with `config` (JSON) on 127.0.0.1:0 and unix:<dir>/s.sock (the first one
  // only), its log and spans in the test's directory.
  Daemon* StartDaemon(const json& config, std::vector<std::string> extra = {}) {
    const std::string name = "d" + std::to_string(daemons_.size());
    auto daemon = std::make_unique<Daemon>(dir_, name);
    std::vector<std::string> args = {"--listen", "127.0.0.1:0"};
    if (daemons_.empty()) args.insert(args.end(), {"--listen", "unix:" + Socket()});
    args.insert(args.end(),
                {"--log", daemon->Path("log.jsonl"), "--spans", daemon->Path("spans.jsonl")});
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string config_file = Write(name + ".config.json", config.dump());
    const ::testing::AssertionResult started = daemon->Start(config_file, args);
    EXPECT_TRUE(started);
    if (!started) return nullptr;
    daemons_.push_back(std::move(daemon));
    return daemons_.back().get();
  }

  // Forks a client that, with raw syscalls only, connects (TCP to `port`, or the Unix socket
  // when port is 0), sends `request`, copies every byte it reads to a pipe and then waits to be
  // killed. Returns the child's pid; `response` gets the first response it read.
  pid_t ForkHolder(int port, const std::string& request, RawResponse* response) {
    int pipe_fds[2];
    EXPECT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    if (port > 0) {
      auto* in = reinterpret_cast<sockaddr_in*>(&addr);
      in->sin_family = AF_INET;
      in->sin_port = htons(static_cast<uint16_t>(port));
      in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr_len = sizeof(sockaddr_in);
    } else {
      auto* un = reinterpret_cast<sockaddr_un*>(&addr);
      un->sun_family = AF_UNIX;
      std::snprintf(un->sun_path, sizeof un->sun_path, "%s", Socket().c_str());
      addr_len = sizeof(sockaddr_un);
    }
    const pid_t pid = fork();
    if (pid == 0) {
      // Async-signal-safe calls only: the parent may have threads.
      close(pipe_fds[0]);
      const int fd = socket(addr.ss_family, SOCK_STREAM, 0);
      if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) _exit(3);
      size_t sent = 0;
      while (sent < request.size()) {
        const ssize_t n = write(fd, request.data() + sent, request.size() - sent);
        if (n <= 0) _exit(4);
        sent += static_cast<size_t>(n);
      }
      char buf[4096];
      for (;;) {
        const ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        if (write(pipe_fds[1], buf, static_cast<size_t>(n)) != n) break;
      }
      for (;;) pause();
    }
    close(pipe_fds[1]);
    if (pid < 0) {
      close(pipe_fds[0]);
      ADD_FAILURE() << "fork: " << ErrnoText();
      return -1;
    }
    children_.push_back(pid);
    std::string in;
    char buf[4096];
    const auto deadline = SteadyClock::now() + milliseconds(kSanitized ? 30'000 : 10'000);
    while (SteadyClock::now() < deadline && ParseResponse(in, response) == 0) {
      pollfd p{pipe_fds[0], POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = read(pipe_fds[0], buf, sizeof buf);
      if (n <= 0) break;
      in.append(buf, static_cast<size_t>(n));
    }
    close(pipe_fds[0]);
    EXPECT_NE(response->status, 0) << "the child got no response; read: " << in;
    return pid;
  }

  void KillChild(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    children_.erase(std::remove(children_.begin(), children_.end(), pid), children_.end());
  }

  fs::path dir_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
  std::vector<pid_t> children_;
};

// True once `pred` holds, polling every 5 ms for up to `timeout`.
template <typename Pred>
bool Eventually(Pred pred, milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  while (!pred()) {
    if (SteadyClock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

bool LeaseListed(httplib::Client& c, const std::string& id) {
  const json leases = BodyOf(c.Get("/v1/leases"));
  if (!leases.contains("leases")) return false;
  for (const json& l : leases["leases"]) {
    if (l["leaseId"] == id) return true;
  }
  return false;
}

std::string ReclaimedSeries(const std::string& reason) {
  return "laneguard_leases_reclaimed_total{reason=\"" + reason + "\"}";
}

}  // namespace

// 1. A TCP client that dies holding a lease loses it only when its TTL runs out; a waiter parked
// meanwhile gets the place then.
TEST_F(ServeDaemonTest, KilledTcpClientsLeaseIsHeldUntilItsTtlThenGoesToAWaiter) {
  Daemon* d = StartDaemon(json::object());
  ASSERT_NE(d, nullptr);
  constexpr int64_t kTtlMs = 600;
  RawResponse granted;
  const pid_t child = ForkHolder(
      d->port(), PostRequest("/v1/leases", R"({"lane":"forecast_model","ttlMs":600})"), &granted);
  const auto granted_at = SteadyClock::now();
  ASSERT_EQ(granted.status, 201) << granted.body;
  const std::string id = json::parse(granted.body)["leaseId"];
  KillChild(child);
  auto c = d->Client();
  ASSERT_TRUE(LeaseListed(*c, id)) << "the lease must outlive its client's connection";

  // Parked on its own connection until the dead client's lease expires.
  std::optional<httplib::Result> waiter_result;
  int64_t waiter_answered_ms = -1;
  std::thread waiter([&] {
    auto w = d->Client();
    waiter_result =
        w->Post("/v1/leases", R"({"lane":"forecast_model","waitMs":5000})", "application/json");
    waiter_answered_ms = MsSince(granted_at);
  });
  ASSERT_TRUE(Eventually([&] { return BodyOf(c->Get("/v1/status"))["parked"] == 1; },
                         milliseconds(kTtlMs)));
  ASSERT_TRUE(Eventually([&] { return !LeaseListed(*c, id); }, milliseconds(5'000)));
  const int64_t gone_ms = MsSince(granted_at);
  waiter.join();
  std::printf(
      "lease gone %lld ms after the grant was read (ttl %lld); waiter answered at %lld ms\n",
      static_cast<long long>(gone_ms), static_cast<long long>(kTtlMs),
      static_cast<long long>(waiter_answered_ms));
  // The grant was read a little after it was made: allow for that below the TTL.
  EXPECT_GE(gone_ms, kTtlMs - 50);
  EXPECT_LE(gone_ms, kTtlMs + 500);

  ASSERT_TRUE(waiter_result && *waiter_result);
  EXPECT_EQ((*waiter_result)->status, 201) << (*waiter_result)->body;
  EXPECT_GE(waiter_answered_ms, kTtlMs - 50);
  const json second = BodyOf(*waiter_result);
  EXPECT_EQ(second["lane"], "forecast_model");
  EXPECT_GT(second["fencingToken"].get<int64_t>(), json::parse(granted.body)["fencingToken"]);
  const std::string metrics = c->Get("/metrics")->body;
  EXPECT_EQ(MetricValue(metrics, ReclaimedSeries("lease_expired")), 1.0) << metrics;
  EXPECT_EQ(MetricValue(metrics, ReclaimedSeries("connection_closed")), 0.0) << metrics;
  const auto released = c->Delete("/v1/leases/" + second["leaseId"].get<std::string>());
  ASSERT_TRUE(released);
  EXPECT_EQ(released->status, 200);
  // The expired one, released late, is remembered as expired.
  const json late = BodyOf(c->Delete("/v1/leases/" + id));
  EXPECT_EQ(late["released"], false);
  EXPECT_EQ(late["reason"], "lease_expired");
}

// 2. A lease bound to its Unix-socket connection is reclaimed as soon as the client dies, however
// long its TTL; the holders dump names the client's pid and uid.
TEST_F(ServeDaemonTest, KilledUnixClientsBoundLeaseIsReclaimedAtOnce) {
  Daemon* d = StartDaemon(json::object());
  ASSERT_NE(d, nullptr);
  RawResponse granted;
  const pid_t child =
      ForkHolder(0,
                 PostRequest("/v1/leases",
                             R"({"lane":"forecast_model","ttlMs":60000,"bindToConnection":true})"),
                 &granted);
  ASSERT_EQ(granted.status, 201) << granted.body;
  const std::string id = json::parse(granted.body)["leaseId"];
  auto c = d->Client();
  const json dump = BodyOf(c->Get("/v1/leases"));
  ASSERT_EQ(dump["leases"].size(), 1u) << dump;
  const json& holder = dump["leases"][0];
  EXPECT_EQ(holder["leaseId"], id);
  EXPECT_EQ(holder["boundToConnection"], true);
  EXPECT_EQ(holder["client"]["unix"], true) << holder;
  EXPECT_EQ(holder["client"]["pid"], child) << holder;
  EXPECT_EQ(holder["client"]["uid"], getuid()) << holder;

  KillChild(child);
  const auto killed_at = SteadyClock::now();
  ASSERT_TRUE(Eventually([&] { return !LeaseListed(*c, id); }, milliseconds(5'000)));
  const int64_t gone_ms = MsSince(killed_at);
  std::printf("bound lease gone %lld ms after its client was killed\n",
              static_cast<long long>(gone_ms));
  EXPECT_LT(gone_ms, 1000);
  const std::string metrics = c->Get("/metrics")->body;
  EXPECT_EQ(MetricValue(metrics, ReclaimedSeries("connection_closed")), 1.0) << metrics;
  EXPECT_EQ(MetricValue(metrics, ReclaimedSeries("lease_expired")), 0.0) << metrics;
  // The place is free again.
  const auto again = c->Post("/v1/leases", R"({"lane":"forecast_model"})", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 201) << again->body;
}

// One of the parked clients of the 2,000-waiter test.
struct ParkedClient {
  int fd = -1;
  std::string request;
  size_t sent = 0;
  std::string in;
  int responses = 0;
  RawResponse response;
};

// Sends every client's request; false if some could not be sent within `timeout`.
bool SendAll(std::vector<ParkedClient>& clients, milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  size_t done = 0;
  std::vector<pollfd> fds(clients.size());
  while (done < clients.size() && SteadyClock::now() < deadline) {
    for (size_t i = 0; i < clients.size(); ++i) {
      const bool pending = clients[i].sent < clients[i].request.size();
      fds[i] = {pending ? clients[i].fd : -1, POLLOUT, 0};
    }
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (size_t i = 0; i < clients.size(); ++i) {
      if ((fds[i].revents & POLLOUT) == 0) continue;
      ParkedClient& c = clients[i];
      const ssize_t n =
          send(c.fd, c.request.data() + c.sent, c.request.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) c.sent += static_cast<size_t>(n);
      if (c.sent == c.request.size()) ++done;
      if (n < 0 && errno != EAGAIN) return false;
    }
  }
  return done == clients.size();
}

// 3. 2,000 requests parked at once on a lane of limit 1 cost the daemon neither a thread each
// nor much memory, and each gets exactly one answer: a grant (released at once, so grants flow)
// or wait_timeout. Half wait less long: the test holds the lane until they have all timed out,
// so both answers are seen whatever the machine's speed; then grants flow to the other half.
TEST_F(ServeDaemonTest, TwoThousandParkedWaitersEachGetExactlyOneAnswer) {
  constexpr int kWaiters = 2000;
  constexpr int64_t kWaitMs = kSanitized ? 10'000 : 4000;
  constexpr int64_t kShortWaitMs = kSanitized ? 4000 : 1500;
  // Each waiter is a socket on both sides, plus the test's and the daemon's own.
  constexpr rlim_t kNeededFds = 4200;
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < kNeededFds) {
    GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << limit.rlim_max << " < " << kNeededFds
                 << ": cannot open 2,000 connections";
  }
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < kNeededFds) {
    limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? kNeededFds : limit.rlim_max;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &limit), 0) << ErrnoText();  // the daemon inherits it
  }
  Daemon* d = StartDaemon({{"laneQueueLimits", {{"forecast_model", 2 * kWaiters}}}});
  ASSERT_NE(d, nullptr);
  auto c = d->Client();
  c->set_keep_alive(true);
  // Held by the test until every waiter is parked.
  const json holder = BodyOf(
      c->Post("/v1/leases", R"({"lane":"forecast_model","ttlMs":120000})", "application/json"));
  ASSERT_TRUE(holder.contains("leaseId")) << holder;

  std::vector<ParkedClient> clients(kWaiters);
  for (ParkedClient& p : clients) {
    p.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ASSERT_GE(p.fd, 0) << ErrnoText();
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(d->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int r = connect(p.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ASSERT_TRUE(r == 0 || errno == EINPROGRESS) << ErrnoText();
  }
  for (int i = 0; i < kWaiters; ++i) {
    clients[i].request =
        PostRequest("/v1/leases", R"({"lane":"forecast_model","waitMs":)" +
                                      std::to_string(i % 2 == 0 ? kWaitMs : kShortWaitMs) + "}");
  }
  const auto sent_at = SteadyClock::now();
  ASSERT_TRUE(SendAll(clients, milliseconds(kShortWaitMs)));

  // All parked: what do they cost the daemon?
  json status;
  ASSERT_TRUE(Eventually(
      [&] {
        status = BodyOf(c->Get("/v1/status"));
        return status["parked"] == kWaiters;
      },
      milliseconds(kShortWaitMs - MsSince(sent_at))))
      << status;
  const int64_t rss_kb = ProcStatus(d->pid(), "VmRSS");
  const int64_t threads = ProcStatus(d->pid(), "Threads");
  // HTTP threads (2), the main thread (signals), the manager's timer, the lease sweeper, the
  // span and log writers; a sanitizer adds its own.
  constexpr int64_t kMaxThreads = 16;
  // A sanitizer's shadow memory and quarantine (ASan keeps up to 256 MB of freed blocks) are not
  // the daemon's: its bound is relaxed there (TSan measured about 96 MB, plain about 20 MB).
  constexpr int64_t kMaxRssKb = int64_t{kSanitized ? 600 : 200} * 1024;
  std::printf(
      "%d parked %lld ms after sending: daemon VmRSS %lld kB (bound %lld), %lld threads "
      "(bound %lld): %s\n",
      kWaiters, static_cast<long long>(MsSince(sent_at)), static_cast<long long>(rss_kb),
      static_cast<long long>(kMaxRssKb), static_cast<long long>(threads),
      static_cast<long long>(kMaxThreads), ThreadNames(d->pid()).c_str());
  EXPECT_GT(rss_kb, 0);
  EXPECT_LT(rss_kb, kMaxRssKb);
  EXPECT_GT(threads, 0);
  EXPECT_LE(threads, kMaxThreads);

  // The short half times out; then grants flow, each released as soon as it arrives.
  int answered = 0, granted = 0, timed_out = 0;
  bool holder_released = false;
  std::vector<pollfd> fds(kWaiters);
  const auto deadline = SteadyClock::now() + milliseconds(kWaitMs + 20'000);
  char buf[4096];
  while (answered < kWaiters && SteadyClock::now() < deadline) {
    if (!holder_released && answered == kWaiters / 2) {
      EXPECT_EQ(timed_out, kWaiters / 2) << "the lane was held: only wait_timeout was possible";
      ASSERT_EQ(c->Delete("/v1/leases/" + holder["leaseId"].get<std::string>())->status, 200);
      holder_released = true;
    }
    for (int i = 0; i < kWaiters; ++i) fds[i] = {clients[i].fd, POLLIN, 0};
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (int i = 0; i < kWaiters; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ParkedClient& p = clients[i];
      const ssize_t n = recv(p.fd, buf, sizeof buf, 0);
      if (n <= 0) {
        ADD_FAILURE() << "waiter " << i << " closed after " << p.responses << " responses";
        close(p.fd);
        p.fd = -1;
        continue;
      }
      p.in.append(buf, static_cast<size_t>(n));
      RawResponse r;
      while (const size_t used = ParseResponse(p.in, &r)) {
        p.in.erase(0, used);
        if (++p.responses > 1) {
          ADD_FAILURE() << "waiter " << i << " got a second response: " << r.status << " "
                        << r.body;
          continue;
        }
        ++answered;
        p.response = r;
        const json body = json::parse(r.body, nullptr, false);
        if (r.status == 201) {
          ++granted;
          const auto released = c->Delete("/v1/leases/" + body["leaseId"].get<std::string>());
          EXPECT_TRUE(released && released->status == 200);
        } else if (r.status == 429 && body["error"] == "wait_timeout") {
          ++timed_out;
        } else {
          ADD_FAILURE() << "waiter " << i << ": unexpected " << r.status << " " << r.body;
        }
      }
    }
  }
  // Nothing more arrives on any connection (a second answer would come at once).
  for (int i = 0; i < kWaiters; ++i) fds[i] = {clients[i].fd, POLLIN, 0};
  const int extra = poll(fds.data(), fds.size(), 200);
  std::printf("%d granted, %d wait_timeout, %d answered in %lld ms\n", granted, timed_out, answered,
              static_cast<long long>(MsSince(sent_at)));
  EXPECT_EQ(extra, 0) << "bytes after the one response, or a close, on some connection";
  EXPECT_EQ(answered, kWaiters);
  EXPECT_EQ(granted + timed_out, kWaiters);
  EXPECT_GT(granted, 0);
  EXPECT_GE(timed_out, kWaiters / 2);
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_EQ(clients[i].responses, 1) << "waiter " << i;
    EXPECT_TRUE(clients[i].in.empty()) << "waiter " << i << ": partial bytes: " << clients[i].in;
    if (clients[i].fd >= 0) close(clients[i].fd);
  }
  const json after = BodyOf(c->Get("/v1/status"));
  EXPECT_EQ(after["parked"], 0) << after;
  EXPECT_EQ(after["leases"], 0) << after;
}

// Expects an error body: JSON with "error" == `code`, a message, and "field" == `field` when given.
void ExpectError(const httplib::Result& r, int status, const std::string& code,
                 const std::string& field = "") {
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, status) << r->body;
  const json body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << r->body;
  EXPECT_EQ(body.value("error", ""), code) << r->body;
  EXPECT_FALSE(body.value("message", "").empty()) << r->body;
  if (!field.empty()) EXPECT_EQ(body.value("field", ""), field) << r->body;
}

// 4. Bad requests are answered with JSON naming the field, a slow client holds nobody up, and a
// lease taken before all of it is still held afterwards.
TEST_F(ServeDaemonTest, BadRequestsAreAnsweredAndHarmNothing) {
  Daemon* d = StartDaemon(json::object());
  ASSERT_NE(d, nullptr);
  auto c = d->Client();
  const json held =
      BodyOf(c->Post("/v1/leases", R"({"lane":"tool_call","ttlMs":60000})", "application/json"));
  ASSERT_TRUE(held.contains("leaseId")) << held;
  const std::string held_id = held["leaseId"];

  // A client that sends half a head and stalls.
  const int slow = ConnectTcp(d->port());
  ASSERT_GE(slow, 0);
  const std::string slow_request = PostRequest("/v1/leases", R"({"lane":"tool_call"})");
  const size_t half = slow_request.find("Content-Length");
  ASSERT_EQ(send(slow, slow_request.data(), half, MSG_NOSIGNAL), static_cast<ssize_t>(half));

  const auto post = [&](const std::string& body) {
    return c->Post("/v1/leases", body, "application/json");
  };
  const auto bad_started = SteadyClock::now();
  ExpectError(post(R"({"lane": "tool_call",)"), 400, "invalid_request", "body");
  ExpectError(post(R"(["tool_call"])"), 400, "invalid_request", "body");
  ExpectError(post(R"({"lane": 7})"), 400, "invalid_request", "lane");
  ExpectError(post(R"({"waitMs": 0})"), 400, "invalid_request", "lane");
  ExpectError(post(R"({"lane": "tool_call", "waitMs": "soon"})"), 400, "invalid_request", "waitMs");
  ExpectError(post(R"({"lane": "tool_call", "ttlMs": 5})"), 400, "invalid_request", "ttlMs");
  ExpectError(post(R"({"lane": "tool_call", "timeoutMs": -1})"), 400, "invalid_request",
              "timeoutMs");
  ExpectError(post(R"({"lane": "tool_call", "priority": "urgent"})"), 400, "invalid_request",
              "priority");
  ExpectError(post(R"({"lane": "tool_call", "traceparent": "00-nope"})"), 400, "invalid_request",
              "traceparent");
  ExpectError(post(R"({"lane": "tool_call", "bindToConnection": true})"), 400, "invalid_request",
              "bindToConnection");
  const auto unknown = post(R"({"lane": "no_such_lane"})");
  ExpectError(unknown, 400, "invalid_request", "lane");
  EXPECT_NE(unknown->body.find("no_such_lane"), std::string::npos) << unknown->body;
  ExpectError(c->Post("/v1/leases/l-0000000000000000/renew", "", "application/json"), 404,
              "lease_not_found");
  ExpectError(c->Delete("/v1/leases/l-0000000000000000"), 404, "lease_not_found");
  ExpectError(c->Post("/v1/leases/" + held_id + "/renew", R"({"ttlMs": "x"})", "application/json"),
              400, "invalid_request", "ttlMs");

  // A 1 MB body: refused (the bound is 256 KiB), and said so even while the body is still coming.
  const int big = ConnectTcp(d->port());
  ASSERT_GE(big, 0);
  const std::string huge =
      R"({"lane":"tool_call","metadata":{"x":")" + std::string(size_t{1} << 20, 'a') + "\"}}";
  const std::optional<RawResponse> too_large =
      Exchange(big, PostRequest("/v1/leases", huge), milliseconds(10'000));
  close(big);
  ASSERT_TRUE(too_large.has_value());
  EXPECT_EQ(too_large->status, 413) << too_large->body;
  EXPECT_EQ(json::parse(too_large->body, nullptr, false).value("error", ""), "body_too_large")
      << too_large->body;

  // All of that while the slow client still holds its connection half-sent.
  const int64_t served_ms = MsSince(bad_started);
  std::printf("bad requests answered in %lld ms beside a stalled head\n",
              static_cast<long long>(served_ms));
  EXPECT_LT(served_ms, kSanitized ? 9'000 : 5'000);
  const std::optional<RawResponse> finished =
      Exchange(slow, std::string_view(slow_request).substr(half), milliseconds(10'000));
  close(slow);
  ASSERT_TRUE(finished.has_value()) << "the slow client's request was dropped";
  EXPECT_EQ(finished->status, 201) << finished->body;
  const json slow_lease = json::parse(finished->body, nullptr, false);
  ASSERT_TRUE(slow_lease.contains("leaseId")) << finished->body;
  EXPECT_EQ(c->Delete("/v1/leases/" + slow_lease["leaseId"].get<std::string>())->status, 200);

  // The lease from before is still held, and the daemon is alive.
  const auto renewed = c->Post("/v1/leases/" + held_id + "/renew", "", "application/json");
  ASSERT_TRUE(renewed);
  EXPECT_EQ(renewed->status, 200) << renewed->body;
  EXPECT_EQ(BodyOf(renewed)["stopRequested"], false);
  EXPECT_EQ(c->Get("/healthz")->status, 200);
  EXPECT_FALSE(ProcessDead(d->pid()));
}

// 4b. With --token-file, every endpoint but the probes needs the bearer token.
TEST_F(ServeDaemonTest, TokenFileRequiresTheBearerToken) {
  const std::string token = "s3cr3t-token-for-the-e2e-test";
  const std::string token_file = Write("token", token + "\n");
  ASSERT_NE(StartDaemon(json::object()), nullptr);  // the first instance: no token
  Daemon* d = StartDaemon(json::object(), {"--token-file", token_file});
  ASSERT_NE(d, nullptr);
  auto c = d->Client();
  const std::string body = R"({"lane":"tool_call"})";
  ExpectError(c->Post("/v1/leases", body, "application/json"), 401, "unauthorized");
  ExpectError(c->Get("/v1/leases"), 401, "unauthorized");
  ExpectError(c->Post("/v1/leases", {{"Authorization", "Bearer wrong"}}, body, "application/json"),
              401, "unauthorized");
  ExpectError(
      c->Post("/v1/leases", {{"Authorization", "Bearer " + token + "x"}}, body, "application/json"),
      401, "unauthorized");
  EXPECT_EQ(c->Get("/healthz")->status, 200);
  const auto ok =
      c->Post("/v1/leases", {{"Authorization", "Bearer " + token}}, body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 201) << ok->body;
  // The token-less first instance never asked for one.
  auto first = daemons_[0]->Client();
  EXPECT_EQ(first->Post("/v1/leases", body, "application/json")->status, 201);
}

json LaneConfig(int tool_call_limit) {
  // "embedding" is a lane beyond the defaults, so a config can leave it out (remove it).
  return {{"laneConcurrencyLimits", {{"tool_call", tool_call_limit}, {"embedding", 2}}}};
}

// 5. Limits change live (PUT /v1/config, SIGHUP) with leases held: a lowered limit only stops new
// grants; a bad config changes nothing.
TEST_F(ServeDaemonTest, ReloadKeepsHeldLeasesAndRefusesBadConfigs) {
  Daemon* d = StartDaemon(LaneConfig(4));
  ASSERT_NE(d, nullptr);
  auto c = d->Client();
  const auto acquire = [&] {
    return c->Post("/v1/leases", R"({"lane":"tool_call","ttlMs":60000})", "application/json");
  };
  const auto renew = [&](const std::string& id) {
    const auto r = c->Post("/v1/leases/" + id + "/renew", "", "application/json");
    return r ? r->status : -1;
  };
  const std::string a = BodyOf(acquire())["leaseId"], b = BodyOf(acquire())["leaseId"];

  const auto put = c->Put("/v1/config", LaneConfig(1).dump(), "application/json");
  ASSERT_TRUE(put);
  ASSERT_EQ(put->status, 200) << put->body;
  EXPECT_EQ(BodyOf(put)["laneConcurrencyLimits"]["tool_call"], 1) << put->body;
  EXPECT_EQ(renew(a), 200);
  EXPECT_EQ(renew(b), 200);
  const auto refused = acquire();
  ExpectError(refused, 429, "lane_limit");
  EXPECT_EQ(BodyOf(c->Get("/v1/status"))["lanes"]["tool_call"]["active"], 2);
  EXPECT_EQ(c->Delete("/v1/leases/" + a)->status, 200);
  EXPECT_EQ(acquire()->status, 429) << "2 held, 1 released: still at the new limit 1";
  EXPECT_EQ(c->Delete("/v1/leases/" + b)->status, 200);
  const auto held = acquire();
  ASSERT_TRUE(held);
  ASSERT_EQ(held->status, 201) << held->body;
  const std::string kept = BodyOf(held)["leaseId"];

  // SIGHUP re-reads the file.
  Write("d0.config.json", LaneConfig(3).dump());
  ASSERT_EQ(kill(d->pid(), SIGHUP), 0);
  json config;
  EXPECT_TRUE(Eventually(
      [&] {
        config = BodyOf(c->Get("/v1/config"));
        return config["laneConcurrencyLimits"]["tool_call"] == 3;
      },
      milliseconds(10'000)))
      << config;
  EXPECT_EQ(renew(kept), 200);
  EXPECT_EQ(acquire()->status, 201) << "limit 3, one held";

  // Refused, naming the key; nothing changes.
  json invalid = LaneConfig(3);
  invalid["globalConcurrencyLimit"] = -1;
  ExpectError(c->Put("/v1/config", invalid.dump(), "application/json"), 400, "invalid_request",
              "globalConcurrencyLimit");
  json removes = LaneConfig(2);
  removes["laneConcurrencyLimits"].erase("embedding");
  const auto removed = c->Put("/v1/config", removes.dump(), "application/json");
  ExpectError(removed, 400, "invalid_request", "laneConcurrencyLimits");
  EXPECT_NE(removed->body.find("embedding"), std::string::npos) << removed->body;
  const json after = BodyOf(c->Get("/v1/config"));
  EXPECT_EQ(after["laneConcurrencyLimits"]["tool_call"], 3) << after;
  EXPECT_EQ(after["laneConcurrencyLimits"]["embedding"], 2) << after;
  EXPECT_EQ(after["globalConcurrencyLimit"], 32) << after;
  EXPECT_EQ(renew(kept), 200);
}

// The attribute `key` of an OTLP JSON span, as its JSON value ({"stringValue": ...}).
json SpanAttribute(const json& span, const std::string& key) {
  for (const json& a : span.value("attributes", json::array())) {
    if (a.value("key", "") == key) return a["value"];
  }
  return json();
}

// 6. SIGTERM drains: parked and new requests are refused, held leases are told to stop and can
// still be released; then the daemon exits 0 with one span per lease in its spans file.
TEST_F(ServeDaemonTest, SigtermDrainsThenExitsWithEveryLeasesSpan) {
  Daemon* d = StartDaemon(json::object());
  ASSERT_NE(d, nullptr);
  auto c = d->Client();
  const std::string trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string parent_span_id = "00f067aa0ba902b7";
  const json first =
      BodyOf(c->Post("/v1/leases",
                     json{{"lane", "forecast_model"},
                          {"traceparent", "00-" + trace_id + "-" + parent_span_id + "-01"}}
                         .dump(),
                     "application/json"));
  ASSERT_TRUE(first.contains("leaseId")) << first;
  const std::string held = first["leaseId"];
  // A traced lease's own context is a child in the same trace.
  EXPECT_TRUE(first.value("traceparent", "").starts_with("00-" + trace_id + "-")) << first;
  const json second = BodyOf(c->Post("/v1/leases", R"({"lane":"tool_call"})", "application/json"));
  ASSERT_TRUE(second.contains("leaseId")) << second;

  std::optional<httplib::Result> waiter;
  std::thread waiting([&] {
    waiter = d->Client()->Post("/v1/leases", R"({"lane":"forecast_model","waitMs":20000})",
                               "application/json");
  });
  const bool parked =
      Eventually([&] { return BodyOf(c->Get("/v1/status"))["parked"] == 1; }, milliseconds(10'000));
  if (!parked) kill(d->pid(), SIGTERM);  // frees the waiter before the join below
  ASSERT_TRUE(parked);
  ASSERT_EQ(kill(d->pid(), SIGTERM), 0);
  waiting.join();
  ASSERT_TRUE(waiter.has_value());
  ExpectError(*waiter, 503, "shutting_down");
  ExpectError(c->Post("/v1/leases", R"({"lane":"tool_call"})", "application/json"), 503,
              "shutting_down");
  EXPECT_EQ(c->Get("/readyz")->status, 503);
  const auto renewed = c->Post("/v1/leases/" + held + "/renew", "", "application/json");
  ASSERT_TRUE(renewed);
  EXPECT_EQ(renewed->status, 200) << renewed->body;
  EXPECT_EQ(BodyOf(renewed)["stopRequested"], true) << renewed->body;
  EXPECT_FALSE(d->WaitExit(milliseconds(0)).has_value()) << "exited with a lease held";

  EXPECT_EQ(c->Delete("/v1/leases/" + second["leaseId"].get<std::string>())->status, 200);
  EXPECT_FALSE(d->WaitExit(milliseconds(0)).has_value()) << "exited with a lease held";
  const auto released = c->Delete("/v1/leases/" + held);
  ASSERT_TRUE(released) << httplib::to_string(released.error()) << "\n" << d->Stderr();
  EXPECT_EQ(released->status, 200) << released->body;
  EXPECT_EQ(BodyOf(released)["released"], true);
  const auto released_at = SteadyClock::now();
  const std::optional<int> exit_status = d->WaitExit(milliseconds(kSanitized ? 30'000 : 10'000));
  ASSERT_TRUE(exit_status.has_value()) << d->Stderr();
  std::printf("exited %lld ms after the last release\n",
              static_cast<long long>(MsSince(released_at)));
  EXPECT_EQ(*exit_status, 0) << d->Stderr();

  std::ifstream spans(d->Path("spans.jsonl"));
  std::map<std::string, json> lease_spans;  // by lease id
  for (std::string line; std::getline(spans, line);) {
    const json span = json::parse(line, nullptr, false);
    ASSERT_TRUE(span.is_object()) << line;
    const json id = SpanAttribute(span, "laneguard.lease_id");
    if (id.is_null()) continue;  // a refused request's span
    EXPECT_TRUE(lease_spans.emplace(id.value("stringValue", ""), span).second)
        << "two spans for lease " << id;
  }
  ASSERT_EQ(lease_spans.size(), 2u) << "one span per lease";
  ASSERT_EQ(lease_spans.count(held), 1u);
  ASSERT_EQ(lease_spans.count(second["leaseId"]), 1u);
  EXPECT_EQ(lease_spans[second["leaseId"]]["name"], "worker_call:tool_call");
  EXPECT_NE(lease_spans[second["leaseId"]]["traceId"], trace_id);
  const json& span = lease_spans[held];
  EXPECT_EQ(span["name"], "worker_call:forecast_model");
  EXPECT_EQ(span["traceId"], trace_id);
  EXPECT_EQ(span["parentSpanId"], parent_span_id);
  EXPECT_EQ("00-" + trace_id + "-" + span["spanId"].get<std::string>() + "-01",
            first["traceparent"]);
}
