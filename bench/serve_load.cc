// Load generator for `laneguard serve` (issue 19's benchmarks): acquire + release pairs over
// HTTP/1.1 keep-alive, and the hand-off latency from a release to a parked waiter's grant.
//
//   laneguard_serve_load --url http://127.0.0.1:PORT --lane bench --clients 8 --seconds 10
//   laneguard_serve_load --url ... --lane handoff --mode handoff --clients 64 --seconds 10
//
// Prints one JSON object on stdout. Each client is a thread with its own blocking socket: plain
// POSIX sockets and a minimal HTTP/1.1 reader (Content-Length bodies only, which is what the
// daemon sends), because the figure to measure is the daemon, and a heavier client would take
// more of the 2 cores the daemon shares with it. Not a general HTTP client.
//
// Thread safety: each HttpConnection belongs to one thread; the shared state is atomics, and the
// per-thread records are read only after the threads are joined.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace laneguard::bench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

struct Options {
  std::string host = "127.0.0.1";
  std::string port = "7878";
  std::string lane = "bench";
  std::string mode = "pairs";  // "pairs" or "handoff"
  int clients = 8;
  double seconds = 10;
  double warmup_seconds = 1;
  int64_t wait_ms = 10'000;
};

struct Response {
  int status = 0;
  std::string body;
};

// One keep-alive connection. Thread safety: one thread at a time.
class HttpConnection {
 public:
  HttpConnection(std::string host, std::string port)
      : host_(std::move(host)), port_(std::move(port)) {}
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;
  ~HttpConnection() { Close(); }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buffer_.clear();
  }

  // Sends one request and reads its response; reconnects first if needed. nullopt on any
  // transport error (the connection is closed then; the next call reconnects).
  std::optional<Response> RoundTrip(std::string_view method, std::string_view target,
                                    std::string_view body) {
    if (fd_ < 0 && !Connect()) return std::nullopt;
    request_.clear();
    request_.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: ");
    request_.append(host_).append(":").append(port_).append("\r\n");
    if (!body.empty()) {
      request_.append("Content-Type: application/json\r\nContent-Length: ");
      request_.append(std::to_string(body.size())).append("\r\n");
    }
    request_.append("\r\n").append(body);
    if (!SendAll(request_) || !ReadResponse()) {
      Close();
      return std::nullopt;
    }
    return std::move(response_);
  }

 private:
  bool Connect() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(host_.c_str(), port_.c_str(), &hints, &res) != 0) return false;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      fd_ = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd_ < 0) continue;
      if (::connect(fd_, a->ai_addr, a->ai_addrlen) == 0) break;
      ::close(fd_);
      fd_ = -1;
    }
    ::freeaddrinfo(res);
    if (fd_ < 0) return false;
    // Each request is one small write; Nagle would hold the next one behind a delayed ACK.
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return true;
  }

  bool SendAll(std::string_view data) const {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  bool Fill() {
    char chunk[16 * 1024];
    for (;;) {
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
  }

  // Parses the status line and Content-Length; a response without Content-Length (chunked) is
  // treated as an error, as the daemon always sends one.
  bool ReadResponse() {
    constexpr size_t kMaxHeadBytes = size_t{64} * 1024;
    size_t head_end = 0;
    while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (buffer_.size() > kMaxHeadBytes || !Fill()) return false;
    }
    const std::string_view head(buffer_.data(), head_end);
    if (head.size() < 12 || head.substr(0, 5) != "HTTP/") return false;
    response_.status = std::atoi(buffer_.c_str() + 9);
    size_t length = 0;
    bool close = false;
    bool have_length = false;
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos < head.size()) {
      const size_t next = head.find("\r\n", pos + 2);
      std::string_view line = head.substr(
          pos + 2, next == std::string_view::npos ? std::string_view::npos : next - pos - 2);
      const size_t colon = line.find(':');
      if (colon != std::string_view::npos) {
        std::string name(line.substr(0, colon));
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        if (name == "content-length") {
          length = std::strtoul(std::string(value).c_str(), nullptr, 10);
          have_length = true;
        } else if (name == "connection" && (value == "close" || value == "Close")) {
          close = true;
        }
      }
      pos = next;
    }
    if (!have_length) return false;
    const size_t total = head_end + 4 + length;
    while (buffer_.size() < total) {
      if (!Fill()) return false;
    }
    response_.body.assign(buffer_, head_end + 4, length);
    buffer_.erase(0, total);
    if (close) Close();
    return true;
  }

  std::string host_;
  std::string port_;
  int fd_ = -1;
  std::string buffer_;
  std::string request_;
  Response response_;
};

// The lease id from a 201 body, without a JSON parser on the hot path ({"leaseId": "l-..."}).
std::string LeaseId(std::string_view body) {
  const size_t key = body.find("\"leaseId\"");
  if (key == std::string_view::npos) return {};
  const size_t open = body.find('"', body.find(':', key) + 1);
  const size_t close = body.find('"', open + 1);
  if (open == std::string_view::npos || close == std::string_view::npos) return {};
  return std::string(body.substr(open + 1, close - open - 1));
}

std::string AcquireBody(const Options& o, int client, int64_t wait_ms) {
  return R"({"lane":")" + o.lane + R"(","taskId":"b-)" + std::to_string(client) + R"(","waitMs":)" +
         std::to_string(wait_ms) + "}";
}

double PercentileMs(std::vector<int64_t>& ns, double q) {
  if (ns.empty()) return 0;
  const auto k = static_cast<size_t>(q * static_cast<double>(ns.size() - 1));
  std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(k), ns.end());
  return static_cast<double>(ns[k]) / 1e6;
}

struct PairRecord {
  int64_t start_ns;
  int64_t latency_ns;
};

struct ClientTally {
  std::vector<PairRecord> pairs;
  int64_t refusals = 0;
  int64_t errors = 0;
  std::map<int, int64_t> statuses;  // unexpected statuses, for the report
};

void PairsClient(const Options& o, int client, const std::atomic<bool>& stop, ClientTally& tally) {
  HttpConnection conn(o.host, o.port);
  const std::string body = AcquireBody(o, client, o.wait_ms);
  std::string target;
  while (!stop.load(std::memory_order_relaxed)) {
    const int64_t t0 = NowNs();
    auto r = conn.RoundTrip("POST", "/v1/leases", body);
    if (!r) {
      if (++tally.errors > 100) return;  // the daemon is gone: stop, the report says so
      continue;
    }
    if (r->status == 429 || r->status == 503) {
      ++tally.refusals;
      continue;
    }
    if (r->status != 201) {
      ++tally.statuses[r->status];
      ++tally.errors;
      continue;
    }
    target = "/v1/leases/" + LeaseId(r->body);
    auto d = conn.RoundTrip("DELETE", target, {});
    if (!d || d->status != 200) {
      ++tally.errors;
      if (d) ++tally.statuses[d->status];
      continue;
    }
    tally.pairs.push_back({t0, NowNs() - t0});
  }
}

int RunPairs(const Options& o) {
  std::atomic<bool> stop{false};
  std::vector<ClientTally> tallies(static_cast<size_t>(o.clients));
  std::vector<std::thread> threads;
  threads.reserve(tallies.size());
  const int64_t begin = NowNs();
  for (int i = 0; i < o.clients; ++i) {
    threads.emplace_back(PairsClient, std::cref(o), i, std::cref(stop),
                         std::ref(tallies[static_cast<size_t>(i)]));
  }
  const int64_t measure_from = begin + static_cast<int64_t>(o.warmup_seconds * 1e9);
  const int64_t measure_to = measure_from + static_cast<int64_t>(o.seconds * 1e9);
  std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(measure_to)));
  stop = true;
  for (auto& t : threads) t.join();
  // Pairs started in the window and finished by its end; the rate is over the window.
  std::vector<int64_t> latencies;
  int64_t refusals = 0;
  int64_t errors = 0;
  nlohmann::json statuses = nlohmann::json::object();
  for (const auto& t : tallies) {
    for (const auto& p : t.pairs) {
      if (p.start_ns >= measure_from && p.start_ns + p.latency_ns <= measure_to)
        latencies.push_back(p.latency_ns);
    }
    refusals += t.refusals;
    errors += t.errors;
    for (const auto& [status, n] : t.statuses) statuses[std::to_string(status)] = n;
  }
  nlohmann::json out = {{"mode", "pairs"},
                        {"clients", o.clients},
                        {"seconds", o.seconds},
                        {"pairs", latencies.size()},
                        {"pairs_per_s", static_cast<double>(latencies.size()) / o.seconds},
                        {"p50_ms", PercentileMs(latencies, 0.50)},
                        {"p99_ms", PercentileMs(latencies, 0.99)},
                        {"refusals", refusals},
                        {"errors", errors},
                        {"unexpected_statuses", statuses}};
  std::printf("%s\n", out.dump().c_str());
  return errors > 0 && latencies.empty() ? 1 : 0;
}

// Hand-off: the lane has limit 1; every client parks on it, and the one granted releases at once
// and parks again. Grants and releases strictly alternate, so grant k+1 follows release k.
struct HandoffTally {
  std::vector<std::pair<int64_t, int64_t>> grants;  // (sequence, 201 received)
  // (sequence, DELETE sent, DELETE response received)
  std::vector<std::tuple<int64_t, int64_t, int64_t>> releases;
  int64_t refusals = 0;
  int64_t errors = 0;
};

// Releases the lease granted as `seq` and records when.
bool ReleaseRecorded(HttpConnection& conn, const std::string& lease_id, int64_t seq,
                     HandoffTally& tally) {
  const int64_t sent = NowNs();
  auto d = conn.RoundTrip("DELETE", "/v1/leases/" + lease_id, {});
  const int64_t received = NowNs();
  if (!d || d->status != 200) {
    ++tally.errors;
    return false;
  }
  tally.releases.emplace_back(seq, sent, received);
  return true;
}

void HandoffClient(const Options& o, int client, const std::atomic<bool>& stop,
                   std::atomic<int64_t>& sequence, HandoffTally& tally) {
  HttpConnection conn(o.host, o.port);
  const std::string body = AcquireBody(o, client, o.wait_ms);
  // After the stop every granted client releases and leaves, so the queue drains.
  for (;;) {
    auto r = conn.RoundTrip("POST", "/v1/leases", body);
    const int64_t received = NowNs();
    if (!r) {
      if (++tally.errors > 100 || stop.load()) return;
      continue;
    }
    if (r->status != 201) {
      ++tally.refusals;
      if (stop.load()) return;
      continue;
    }
    const int64_t seq = sequence.fetch_add(1) + 1;
    tally.grants.emplace_back(seq, received);
    ReleaseRecorded(conn, LeaseId(r->body), seq, tally);
    if (stop.load()) return;
  }
}

// The lane's "queued" from GET /v1/status (-1 if it cannot be read).
int64_t Queued(HttpConnection& conn, const std::string& lane) {
  auto r = conn.RoundTrip("GET", "/v1/status", {});
  if (!r || r->status != 200) return -1;
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return -1;
  // The spec's status lists lanes under "lanes" (an object by name, or an array of objects).
  const auto lanes = j.find("lanes");
  if (lanes == j.end()) return -1;
  if (lanes->is_object() && lanes->contains(lane)) return (*lanes)[lane].value("queued", -1);
  if (lanes->is_array()) {
    for (const auto& l : *lanes) {
      if (l.value("lane", std::string()) == lane || l.value("name", std::string()) == lane)
        return l.value("queued", -1);
    }
  }
  return -1;
}

int RunHandoff(const Options& o) {
  HttpConnection holder(o.host, o.port);
  auto first = holder.RoundTrip("POST", "/v1/leases", AcquireBody(o, -1, 0));
  if (!first || first->status != 201) {
    std::fprintf(stderr, "serve_load: the first lease on lane %s was refused (status %d): %s\n",
                 o.lane.c_str(), first ? first->status : 0, first ? first->body.c_str() : "");
    return 1;
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> sequence{0};
  std::vector<HandoffTally> tallies(static_cast<size_t>(o.clients) + 1);
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(o.clients));
  for (int i = 0; i < o.clients; ++i) {
    threads.emplace_back(HandoffClient, std::cref(o), i, std::cref(stop), std::ref(sequence),
                         std::ref(tallies[static_cast<size_t>(i)]));
  }
  // Hand on only when every client is parked (bounded: 10 s, then start anyway and say so).
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  int64_t queued = -1;
  HttpConnection status(o.host, o.port);
  while (Clock::now() < deadline && (queued = Queued(status, o.lane)) < o.clients) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ReleaseRecorded(holder, LeaseId(first->body), 0, tallies.back());
  const int64_t measure_from = NowNs() + static_cast<int64_t>(o.warmup_seconds * 1e9);
  const int64_t measure_to = measure_from + static_cast<int64_t>(o.seconds * 1e9);
  std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(measure_to)));
  stop = true;
  for (auto& t : threads) t.join();
  std::map<int64_t, std::pair<int64_t, int64_t>> releases;
  std::map<int64_t, int64_t> grants;
  int64_t refusals = 0;
  int64_t errors = 0;
  for (const auto& t : tallies) {
    for (const auto& [seq, sent, received] : t.releases) releases[seq] = {sent, received};
    for (const auto& [seq, at] : t.grants) grants[seq] = at;
    refusals += t.refusals;
    errors += t.errors;
  }
  // Grant k follows release k-1: from its DELETE's response (as issue 19 asks; negative when the
  // daemon wrote the grant first) and from its DELETE's send (always positive).
  std::vector<int64_t> from_response;
  std::vector<int64_t> from_send;
  for (const auto& [seq, at] : grants) {
    const auto r = releases.find(seq - 1);
    if (r == releases.end() || r->second.first < measure_from || at > measure_to) continue;
    from_send.push_back(at - r->second.first);
    from_response.push_back(at - r->second.second);
  }
  const auto n = static_cast<double>(from_send.size());
  nlohmann::json out = {{"mode", "handoff"},
                        {"clients", o.clients},
                        {"parked_at_start", queued},
                        {"handoffs", from_send.size()},
                        {"handoffs_per_s", n / o.seconds},
                        {"p50_ms", PercentileMs(from_response, 0.50)},
                        {"p99_ms", PercentileMs(from_response, 0.99)},
                        {"from_send_p50_ms", PercentileMs(from_send, 0.50)},
                        {"from_send_p99_ms", PercentileMs(from_send, 0.99)},
                        {"refusals", refusals},
                        {"errors", errors}};
  std::printf("%s\n", out.dump().c_str());
  return from_send.empty() ? 1 : 0;
}

// A bad flag: main prints it with the usage and exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void Usage(const std::string& why) { throw UsageError(why); }

double PositiveNumber(const std::string& flag, const char* text, double max) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v >= 0) || v > max) {
    Usage(flag + ": not a number in [0, " + std::to_string(static_cast<int64_t>(max)) +
          "]: " + text);
  }
  return v;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) Usage(flag + ": needs a value");
    const char* v = argv[++i];
    if (flag == "--url") {
      std::string_view url = v;
      if (url.substr(0, 7) != "http://") Usage(flag + ": not http://HOST:PORT: " + v);
      url.remove_prefix(7);
      if (!url.empty() && url.back() == '/') url.remove_suffix(1);
      const size_t colon = url.rfind(':');
      if (colon == std::string_view::npos) Usage(flag + ": no port: " + v);
      o.host = std::string(url.substr(0, colon));
      o.port = std::string(url.substr(colon + 1));
    } else if (flag == "--lane") {
      o.lane = v;
    } else if (flag == "--mode") {
      o.mode = v;
      if (o.mode != "pairs" && o.mode != "handoff") Usage("--mode: unknown: " + o.mode);
    } else if (flag == "--clients") {
      o.clients = static_cast<int>(PositiveNumber(flag, v, 10'000));
      if (o.clients < 1) Usage("--clients: at least 1");
    } else if (flag == "--seconds") {
      o.seconds = PositiveNumber(flag, v, 3600);
      if (o.seconds <= 0) Usage("--seconds: more than 0");
    } else if (flag == "--warmup-seconds") {
      o.warmup_seconds = PositiveNumber(flag, v, 3600);
    } else if (flag == "--wait-ms") {
      o.wait_ms = static_cast<int64_t>(PositiveNumber(flag, v, 86'400'000));
    } else {
      Usage("unknown flag: " + flag);
    }
  }
  return o;
}

}  // namespace
}  // namespace laneguard::bench

int main(int argc, char** argv) {
  try {
    const auto o = laneguard::bench::ParseArgs(argc, argv);
    return o.mode == "pairs" ? laneguard::bench::RunPairs(o) : laneguard::bench::RunHandoff(o);
  } catch (const laneguard::bench::UsageError& e) {
    std::fprintf(stderr,
                 "serve_load: %s\nusage: laneguard_serve_load --url http://HOST:PORT [--lane L] "
                 "[--clients N] [--seconds S] [--warmup-seconds S] [--wait-ms W] "
                 "[--mode pairs|handoff]\n",
                 e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve_load: %s\n", e.what());
    return 1;
  }
}
