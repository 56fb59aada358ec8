// The embeddable /metrics server. prometheus-cpp's own Exposer is not used because it always
// answers in the text format: it cannot negotiate OpenMetrics. cpp-httplib (which served it
// before) is not used either: its timeouts are per read, so a client trickling a byte every few
// seconds holds a worker thread forever, and 64 idle connections occupy its whole pool. It has
// no way to bound a request's total time.
//
// So: one thread, one poll() loop, non-blocking sockets. The accept loop never waits on a client.
// Each connection has a deadline for its whole request head (kHeadDeadline from accept) and for
// its whole response; past it, it is closed. Connections are bounded per client address and in
// total; at a bound, the oldest connection still sending its head is closed to make room (an
// idle or trickling client loses its place, a scraper that sends its request at once does not).
// One request per connection (Connection: close), which Prometheus handles.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "laneguard/prometheus.h"

namespace laneguard {
namespace {

ConfigError HostError(std::string_view key, const std::string& host) {
  const std::string value = "\"" + host + "\"";
  return ConfigError{std::string(key), value,
                     "option '" + std::string(key) + "' = " + value +
                         ": not an IPv4 or IPv6 address (or \"localhost\")"};
}

ConfigError PortError(std::string_view key, std::string_view port) {
  const std::string value(port);
  return ConfigError{std::string(key), value,
                     "option '" + std::string(key) + "' = " + value +
                         ": port must be an integer in [0, 65535] (0 picks a free port)"};
}

// True for an IPv4 or IPv6 literal.
bool IsAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

Result<MetricsServerOptions, ConfigError> ParseListenAddress(std::string_view text,
                                                             std::string_view key) {
  const std::string whole(text);
  const std::string value = "\"" + whole + "\"";
  const auto bad = [&](const std::string& why) {
    return ConfigError{std::string(key), value,
                       "option '" + std::string(key) + "' = " + value + ": " + why};
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("expected HOST:PORT, e.g. 127.0.0.1:9464");
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("an IPv6 host must be in brackets, e.g. [::1]:9464");
  }
  MetricsServerOptions options;
  options.host = std::string(host);
  if (options.host != "localhost" && !IsAddress(options.host)) {
    return bad("'" + options.host + "' is not an IPv4 or IPv6 address (or localhost)");
  }
  int p = -1;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535) {
    return bad("port '" + std::string(port) + "' must be an integer in [0, 65535]");
  }
  options.port = p;
  return options;
}

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr auto kHeadDeadline = std::chrono::seconds(5);    // the whole request head
constexpr auto kWriteDeadline = std::chrono::seconds(10);  // the whole response
constexpr auto kLingerDeadline = std::chrono::seconds(1);  // reading what the client still sends
constexpr size_t kMaxHeadBytes = 8192;
constexpr size_t kMaxPerAddress = 16;
constexpr size_t kMaxConnections = 256;

struct Connection {
  enum class State { kReading, kWriting, kDraining };
  int fd = -1;
  std::string peer;  // the client's address, without the port
  State state = State::kReading;
  SteadyClock::time_point deadline;
  std::string in;
  std::string out;
  size_t sent = 0;
};

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 406:
      return "Not Acceptable";
    case 431:
      return "Request Header Fields Too Large";
    default:
      return "Error";
  }
}

std::string Response(int status, std::string_view content_type, std::string_view body,
                     bool with_body, std::string_view extra_headers = {}) {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + std::string(ReasonPhrase(status)) +
                  "\r\nContent-Type: " + std::string(content_type) +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
                  std::string(extra_headers) + "Connection: close\r\n\r\n";
  if (with_body) r += body;
  return r;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The value of header `name` (lower case) in a request head, "" when absent.
std::string HeaderValue(std::string_view head, std::string_view name) {
  size_t pos = head.find('\n');
  while (pos != std::string_view::npos && pos + 1 < head.size()) {
    const size_t start = pos + 1;
    const size_t end = head.find('\n', start);
    std::string_view line = head.substr(start, end == std::string_view::npos ? end : end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const size_t colon = line.find(':');
    if (colon != std::string_view::npos && Lower(line.substr(0, colon)) == name) {
      std::string_view v = line.substr(colon + 1);
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      return std::string(v);
    }
    pos = end;
  }
  return "";
}

}  // namespace

struct MetricsServer::Impl {
  std::shared_ptr<const PrometheusCollector> collector;
  std::string host;
  std::string path;
  int port = 0;
  int listen_fd = -1;
  int wake_fd = -1;  // an eventfd: Stop() wakes the loop
  std::thread thread;
  std::mutex stop_mu;
  std::list<Connection> connections;  // in accept order: the oldest first
  std::map<std::string, size_t> per_address;

  ~Impl() {
    for (Connection& c : connections) close(c.fd);
    if (listen_fd >= 0) close(listen_fd);
    if (wake_fd >= 0) close(wake_fd);
  }

  void Loop() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      fds.push_back({wake_fd, POLLIN, 0});
      fds.push_back({listen_fd, POLLIN, 0});
      for (const Connection& c : connections)
        fds.push_back(
            {c.fd, static_cast<short>(c.state == Connection::State::kWriting ? POLLOUT : POLLIN),
             0});
      if (poll(fds.data(), fds.size(), PollTimeoutMs()) < 0 && errno != EINTR) return;
      if (fds[0].revents != 0) return;  // Stop()
      size_t i = 2;
      for (auto it = connections.begin(); it != connections.end(); ++i) {
        const bool keep = fds[i].revents == 0 ? SteadyClock::now() < it->deadline : Serve(*it);
        it = keep ? std::next(it) : Close(it);
      }
      if (fds[1].revents != 0) AcceptAll();
    }
  }

  int PollTimeoutMs() const {
    auto soonest = SteadyClock::now() + std::chrono::seconds(1);
    for (const Connection& c : connections) soonest = std::min(soonest, c.deadline);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(soonest - SteadyClock::now());
    return static_cast<int>(std::max<int64_t>(ms.count(), 0) + 1);
  }

  void AcceptAll() {
    for (;;) {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      const int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: none left; anything else: try again on the next wake
      Admit(fd, PeerAddress(addr));
    }
  }

  static std::string PeerAddress(const sockaddr_storage& addr) {
    char text[INET6_ADDRSTRLEN] = "";
    if (addr.ss_family == AF_INET)
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, text, sizeof text);
    if (addr.ss_family == AF_INET6)
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr, text,
                sizeof text);
    return text;
  }

  // Makes room at a bound by closing the oldest connection still sending its head; if every one
  // is past that (answering), the new one is refused instead.
  void Admit(int fd, std::string peer) {
    const bool address_full = per_address[peer] >= kMaxPerAddress;
    if (address_full || connections.size() >= kMaxConnections) {
      auto oldest = std::find_if(connections.begin(), connections.end(), [&](const Connection& c) {
        return c.state == Connection::State::kReading && (!address_full || c.peer == peer);
      });
      if (oldest == connections.end()) {
        close(fd);
        return;
      }
      Close(oldest);
    }
    ++per_address[peer];
    Connection c;
    c.fd = fd;
    c.peer = std::move(peer);
    c.deadline = SteadyClock::now() + kHeadDeadline;
    connections.push_back(std::move(c));
  }

  std::list<Connection>::iterator Close(std::list<Connection>::iterator it) {
    close(it->fd);
    if (--per_address[it->peer] == 0) per_address.erase(it->peer);
    return connections.erase(it);
  }

  // Handles readiness; false when the connection is done with.
  bool Serve(Connection& c) {
    switch (c.state) {
      case Connection::State::kReading:
        return Read(c);
      case Connection::State::kWriting:
        return Write(c);
      case Connection::State::kDraining: {
        char buf[4096];
        const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
        return (n > 0 || (n < 0 && errno == EAGAIN)) && SteadyClock::now() < c.deadline;
      }
    }
    return false;
  }

  bool Read(Connection& c) {
    char buf[4096];
    const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return false;
    if (n > 0) c.in.append(buf, static_cast<size_t>(n));
    const size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (c.in.size() > kMaxHeadBytes)
        return Answer(c, Response(431, "text/plain", "request head too large\n", true));
      return SteadyClock::now() < c.deadline;
    }
    return Answer(c, Handle(std::string_view(c.in).substr(0, end)));
  }

  std::string Handle(std::string_view head) const {
    const std::string_view line = head.substr(0, head.find("\r\n"));
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos)
      return Response(400, "text/plain", "bad request line\n", true);
    const std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (target != path) return Response(404, "text/plain", "not found\n", method != "HEAD");
    if (method != "GET" && method != "HEAD")
      return Response(405, "text/plain", "only GET and HEAD\n", true, "Allow: GET, HEAD\r\n");
    const MetricsResponse r = collector->Handle(HeaderValue(head, "accept"));
    return Response(r.status, r.content_type, r.body, method == "GET");
  }

  bool Answer(Connection& c, std::string response) {
    c.in.clear();
    c.in.shrink_to_fit();
    c.out = std::move(response);
    c.state = Connection::State::kWriting;
    c.deadline = SteadyClock::now() + kWriteDeadline;
    return Write(c);
  }

  bool Write(Connection& c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) return (errno == EAGAIN || errno == EINTR) && SteadyClock::now() < c.deadline;
      c.sent += static_cast<size_t>(n);
    }
    // Closing with unread request bytes (a POST body) would reset the connection and could lose
    // the response: say we are done, then read until the client closes, briefly.
    shutdown(c.fd, SHUT_WR);
    c.out.clear();
    c.out.shrink_to_fit();
    c.state = Connection::State::kDraining;
    c.deadline = SteadyClock::now() + kLingerDeadline;
    return true;
  }
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsServer::~MetricsServer() { Stop(); }

namespace {

// A listening, non-blocking socket on host:port (port 0: a free one); -1 with errno on failure.
int Listen(const std::string& host, int port, int& bound_port) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  const bool v6 = host.find(':') != std::string::npos;
  if (v6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(addr);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET6, host.c_str(), &a.sin6_addr);
    len = sizeof a;
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(addr);
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    len = sizeof a;
  }
  const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  // SO_REUSEADDR alone allows a quick restart; SO_REUSEPORT would let a second server bind a port
  // already in use and silently share it.
  const int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  bound_port = ntohs(v6 ? reinterpret_cast<sockaddr_in6&>(addr).sin6_port
                        : reinterpret_cast<sockaddr_in&>(addr).sin_port);
  return fd;
}

}  // namespace

Result<std::unique_ptr<MetricsServer>, ConfigError> MetricsServer::Start(
    std::shared_ptr<const PrometheusCollector> collector, MetricsServerOptions options) {
  if (collector == nullptr) {
    return ConfigError{"collector", "null", "MetricsServer needs a collector, got null"};
  }
  std::string host = options.host == "localhost" ? "127.0.0.1" : options.host;
  if (!IsAddress(host)) return HostError("host", options.host);
  if (options.port < 0 || options.port > 65535) {
    return PortError("port", std::to_string(options.port));
  }
  if (options.path.empty() || options.path.front() != '/') {
    const std::string value = "\"" + options.path + "\"";
    return ConfigError{"path", value, "option 'path' = " + value + ": must start with '/'"};
  }
  auto impl = std::make_unique<Impl>();
  impl->collector = std::move(collector);
  impl->host = host;
  impl->path = options.path;
  impl->listen_fd = Listen(host, options.port, impl->port);
  if (impl->listen_fd < 0) {
    const std::string value = host + ":" + std::to_string(options.port);
    return ConfigError{"port", std::to_string(options.port),
                       "metrics server could not listen on " + value + ": " + std::strerror(errno)};
  }
  impl->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl->wake_fd < 0) {
    return ConfigError{"port", std::to_string(impl->port),
                       std::string("metrics server: eventfd: ") + std::strerror(errno)};
  }
  Impl* raw = impl.get();
  // Listening already: a client that connects before the thread runs waits in the backlog.
  raw->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

const std::string& MetricsServer::host() const { return impl_->host; }
int MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  std::lock_guard<std::mutex> guard(impl_->stop_mu);
  if (!impl_->thread.joinable()) return;
  const uint64_t one = 1;
  (void)!write(impl_->wake_fd, &one, sizeof one);
  impl_->thread.join();
  // Stopped means stopped: no connection is accepted or answered any more.
  for (Connection& c : impl_->connections) close(c.fd);
  impl_->connections.clear();
  impl_->per_address.clear();
  close(impl_->listen_fd);
  impl_->listen_fd = -1;
}

}  // namespace laneguard
