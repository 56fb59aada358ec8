// The embeddable /metrics server, on Boost.Asio and Boost.Beast (Debian's libboost-dev, header
// only). prometheus-cpp's own Exposer is not used because it always answers in the text format:
// it cannot negotiate OpenMetrics. cpp-httplib (which served it first) is not used either: its
// timeouts are per read, so a client trickling a byte every few seconds holds a worker thread
// forever, and 64 idle connections occupy its whole pool; it has no way to bound a request's total
// time. Beast does: a beast::tcp_stream's expires_after() is a deadline for the whole operation,
// however many reads http::async_read makes, and its parser bounds the head and the body.
//
// So: one thread runs an io_context and never waits on a client. Each connection has 5 s from
// accept for its whole request (head and body) and 10 s for its whole response; past either, it
// is closed. Connections are bounded per client address (16) and in total (256); at a bound, the
// oldest connection still sending its request is closed to make room (an idle or trickling client
// loses its place, a scraper that sends its request at once does not). One request per connection
// (Connection: close), which Prometheus handles.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "laneguard/exporters/prometheus.h"
#include "laneguard/internal/mutex.h"

namespace laneguard {
namespace {

Error HostError(std::string_view key, const std::string& host) {
  const std::string value = "\"" + host + "\"";
  return Error{ErrorCode::kInvalidArgument, std::string(key), value,
               "option '" + std::string(key) + "' = " + value +
                   ": not an IPv4 or IPv6 address (or \"localhost\")"};
}

Error PortError(std::string_view key, std::string_view port) {
  const std::string value(port);
  return Error{ErrorCode::kInvalidArgument, std::string(key), value,
               "option '" + std::string(key) + "' = " + value +
                   ": port must be an integer in [0, 65535] (0 picks a free port)"};
}

// True for an IPv4 or IPv6 literal.
bool IsAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

Result<MetricsServerOptions> ParseListenAddress(std::string_view text, std::string_view key) {
  const std::string whole(text);
  const std::string value = "\"" + whole + "\"";
  const auto bad = [&](const std::string& why) {
    return Error{ErrorCode::kInvalidArgument, std::string(key), value,
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

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

constexpr auto kRequestDeadline = std::chrono::seconds(5);  // the whole request, from accept
constexpr auto kWriteDeadline = std::chrono::seconds(10);   // the whole response
constexpr auto kLingerDeadline = std::chrono::seconds(1);   // reading what the client still sends
constexpr auto kAcceptRetry = std::chrono::milliseconds(100);
constexpr std::uint32_t kMaxHeadBytes = 8192;
constexpr std::uint64_t kMaxBodyBytes = 8192;  // a scrape sends none
constexpr std::size_t kMaxBufferBytes = std::size_t{2} * kMaxHeadBytes;
constexpr std::size_t kMaxPerAddress = 16;
constexpr std::size_t kMaxConnections = 256;
constexpr int kBacklog = 128;

beast::string_view View(std::string_view s) { return {s.data(), s.size()}; }
std::string_view View(beast::string_view s) { return {s.data(), s.size()}; }

// A response with `body` (sent only when `with_body`: HEAD gets the length, not the bytes).
Response Reply(unsigned status, std::string_view content_type, std::string body, bool with_body) {
  Response response;
  response.version(11);
  response.result(status);
  response.set(http::field::content_type, View(content_type));
  response.keep_alive(false);  // Connection: close
  response.content_length(body.size());
  if (with_body) response.body() = std::move(body);
  return response;
}

class Server;

// One client connection: reading its request, writing the response, then briefly draining.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  enum class State { kReading, kWriting, kDraining, kClosed };

  Connection(Server& server, tcp::socket socket, std::string peer)
      : server_(server), stream_(std::move(socket)), peer_(std::move(peer)) {}

  void Start();
  // Closes the socket; its pending operations end with operation_aborted and do nothing more.
  void Shut() {
    state_ = State::kClosed;
    stream_.close();
  }
  State state() const { return state_; }
  const std::string& peer() const { return peer_; }

  std::list<std::shared_ptr<Connection>>::iterator where;  // in Server::connections_

 private:
  void OnRead(beast::error_code ec);
  void Write(Response response);
  void OnWrite(beast::error_code ec);
  void Drain();

  Server& server_;
  beast::tcp_stream stream_;
  std::string peer_;
  State state_ = State::kReading;
  beast::flat_buffer buffer_{kMaxBufferBytes};
  std::optional<http::request_parser<http::string_body>> parser_;
  Response response_;
  std::array<char, 4096> drain_{};
};

// Everything the serving thread touches. Only that thread uses it while it runs; Start() sets it
// up before the thread starts and Stop() closes it after the thread has been joined.
class Server {
 public:
  Server(std::shared_ptr<const PrometheusCollector> collector, std::string path)
      : collector_(std::move(collector)), path_(std::move(path)) {}

  asio::io_context& io() { return io_; }

  // Opens, binds and listens on `endpoint`; the bound port, or 0 with `ec` set.
  int Listen(const tcp::endpoint& endpoint, beast::error_code& ec) {
    // Asio opens and accepts sockets without close-on-exec. `laneguard run` starts programs while
    // this serves, and they must not inherit the listening port or a client's connection.
    const int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ec.assign(errno, boost::system::system_category());
      return 0;
    }
    protocol_ = endpoint.protocol();
    acceptor_.assign(protocol_, fd, ec);
    if (ec) {
      ::close(fd);
      return 0;
    }
    // SO_REUSEADDR alone allows a quick restart; SO_REUSEPORT would let a second server bind a
    // port already in use and silently share it.
    acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.non_blocking(true, ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(kBacklog, ec);
    const tcp::endpoint bound = ec ? tcp::endpoint() : acceptor_.local_endpoint(ec);
    if (ec) {
      beast::error_code ignored;
      acceptor_.close(ignored);
      return 0;
    }
    return bound.port();
  }

  // Waits for the listening socket to be readable, then accepts every pending connection.
  void Accept() {
    acceptor_.async_wait(tcp::acceptor::wait_read, [this](beast::error_code ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      for (;;) {
        const int fd =
            ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          // Out of descriptors or memory: the socket stays readable, so wait a little rather
          // than spin on it.
          retry_.expires_after(kAcceptRetry);
          retry_.async_wait([this](beast::error_code wait_ec) {
            if (!wait_ec) Accept();
          });
          return;
        }
        tcp::socket socket(io_);
        beast::error_code assign_ec;
        socket.assign(protocol_, fd, assign_ec);
        if (assign_ec) {
          ::close(fd);
          continue;
        }
        Admit(std::move(socket));
      }
      Accept();
    });
  }

  // Closes `c` and forgets it (its pending handlers may still hold it; they see kClosed).
  void Close(Connection& c) {
    if (c.state() == Connection::State::kClosed) return;
    c.Shut();
    const auto count = per_address_.find(c.peer());
    if (count != per_address_.end() && --count->second == 0) per_address_.erase(count);
    const std::shared_ptr<Connection> keep = *c.where;  // `c` outlives the erase
    connections_.erase(c.where);
  }

  // After the thread has stopped: stops accepting and closes every connection. (Handlers still
  // queued, a retry's timer among them, never run; the io_context destroys them.)
  void CloseAll() {
    beast::error_code ignored;
    acceptor_.close(ignored);
    for (const std::shared_ptr<Connection>& c : connections_) c->Shut();
    connections_.clear();
    per_address_.clear();
  }

  // The answer to a complete request.
  Response Answer(const Request& request) const {
    const bool head = request.method() == http::verb::head;
    std::string_view target = View(request.target());
    target = target.substr(0, target.find('?'));
    if (target != path_) return Reply(404, "text/plain", "not found\n", !head);
    if (!head && request.method() != http::verb::get) {
      Response response = Reply(405, "text/plain", "only GET and HEAD\n", true);
      response.set(http::field::allow, "GET, HEAD");
      return response;
    }
    MetricsResponse r = collector_->Handle(View(request[http::field::accept]));
    return Reply(static_cast<unsigned>(r.status), r.content_type, std::move(r.body), !head);
  }

 private:
  // Makes room at a bound by closing the oldest connection still sending its request; if every
  // one is past that (answering), the new one is refused instead.
  void Admit(tcp::socket socket) {
    beast::error_code ec;
    const tcp::endpoint remote = socket.remote_endpoint(ec);
    if (ec) return;  // gone already
    std::string peer = remote.address().to_string();
    const auto count = per_address_.find(peer);
    const bool address_full = count != per_address_.end() && count->second >= kMaxPerAddress;
    if (address_full || connections_.size() >= kMaxConnections) {
      const auto oldest = std::find_if(connections_.begin(), connections_.end(),
                                       [&](const std::shared_ptr<Connection>& c) {
                                         return c->state() == Connection::State::kReading &&
                                                (!address_full || c->peer() == peer);
                                       });
      if (oldest == connections_.end()) return;  // `socket` closes as it goes
      Close(**oldest);
    }
    ++per_address_[peer];
    auto c = std::make_shared<Connection>(*this, std::move(socket), std::move(peer));
    connections_.push_back(c);
    c->where = std::prev(connections_.end());
    c->Start();
  }

  // Declared first, destroyed last: the handlers it still holds own connections.
  asio::io_context io_{1};
  tcp::acceptor acceptor_{io_};
  asio::steady_timer retry_{io_};
  tcp protocol_ = tcp::v4();
  std::shared_ptr<const PrometheusCollector> collector_;
  std::string path_;
  std::list<std::shared_ptr<Connection>> connections_;  // in accept order: the oldest first
  std::map<std::string, std::size_t> per_address_;
};

void Connection::Start() {
  parser_.emplace();
  parser_->header_limit(kMaxHeadBytes);
  parser_->body_limit(kMaxBodyBytes);
  // One deadline for the whole request, however many reads it takes.
  stream_.expires_after(kRequestDeadline);
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, std::size_t /*bytes*/) {
                     self->OnRead(ec);
                   });
}

void Connection::OnRead(beast::error_code ec) {
  if (state_ != State::kReading) return;  // closed to make room, or stopped
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    return Write(Reply(431, "text/plain", "request head too large\n", true));
  }
  if (ec == http::error::body_limit) {
    return Write(Reply(413, "text/plain", "request body too large\n", true));
  }
  // Any other parser error is a malformed request (400). The client closing early (end_of_stream,
  // partial_message), the deadline passing (beast::error::timeout) or a socket error ends the
  // connection without an answer.
  const boost::system::error_category& parser =
      http::make_error_code(http::error::bad_method).category();
  if (ec && ec.category() == parser && ec != http::error::end_of_stream &&
      ec != http::error::partial_message) {
    return Write(Reply(400, "text/plain", "bad request\n", true));
  }
  if (ec) return server_.Close(*this);
  Write(server_.Answer(parser_->get()));
}

void Connection::Write(Response response) {
  state_ = State::kWriting;
  parser_.reset();
  response_ = std::move(response);
  stream_.expires_after(kWriteDeadline);
  http::async_write(stream_, response_,
                    [self = shared_from_this()](beast::error_code ec, std::size_t /*bytes*/) {
                      self->OnWrite(ec);
                    });
}

void Connection::OnWrite(beast::error_code ec) {
  if (state_ != State::kWriting) return;
  if (ec) return server_.Close(*this);
  // Closing with unread request bytes (the rest of an oversized head) would reset the connection
  // and could lose the response: say we are done, then read until the client closes, briefly.
  response_ = {};
  beast::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  state_ = State::kDraining;
  stream_.expires_after(kLingerDeadline);
  Drain();
}

void Connection::Drain() {
  stream_.async_read_some(asio::buffer(drain_),
                          [self = shared_from_this()](beast::error_code ec, std::size_t /*bytes*/) {
                            if (self->state_ != State::kDraining) return;
                            if (ec) return self->server_.Close(*self);
                            self->Drain();
                          });
}

}  // namespace

struct MetricsServer::Impl {
  Impl(std::shared_ptr<const PrometheusCollector> collector, std::string path)
      : server(std::move(collector), std::move(path)) {}

  Server server;
  std::string host;
  int port = 0;
  internal::Mutex stop_mu;  // serializes Stop()
  std::thread thread GUARDED_BY(stop_mu);
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsServer::~MetricsServer() { Stop(); }

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    std::shared_ptr<const PrometheusCollector> collector, MetricsServerOptions options) {
  if (collector == nullptr) {
    return Error{ErrorCode::kInvalidArgument, "collector", "null",
                 "MetricsServer needs a collector, got null"};
  }
  std::string host = options.host == "localhost" ? "127.0.0.1" : options.host;
  beast::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  if (ec || !IsAddress(host)) return HostError("host", options.host);
  if (options.port < 0 || options.port > 65535) {
    return PortError("port", std::to_string(options.port));
  }
  if (options.path.empty() || options.path.front() != '/') {
    const std::string value = "\"" + options.path + "\"";
    return Error{ErrorCode::kInvalidArgument, "path", value,
                 "option 'path' = " + value + ": must start with '/'"};
  }
  auto impl = std::make_unique<Impl>(std::move(collector), options.path);
  impl->host = host;
  impl->port =
      impl->server.Listen(tcp::endpoint(address, static_cast<std::uint16_t>(options.port)), ec);
  if (ec) {
    const std::string value = host + ":" + std::to_string(options.port);
    return Error{ErrorCode::kUnavailable, "port", std::to_string(options.port),
                 "metrics server could not listen on " + value + ": " + ec.message()};
  }
  Impl* raw = impl.get();
  // Listening already: a client that connects before the thread runs waits in the backlog.
  raw->server.Accept();
  {
    internal::MutexLock lock(raw->stop_mu);  // not shared yet; for the analysis' sake
    raw->thread = std::thread([raw] { raw->server.io().run(); });
  }
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

const std::string& MetricsServer::host() const { return impl_->host; }
int MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  internal::MutexLock guard(impl_->stop_mu);
  if (!impl_->thread.joinable()) return;
  impl_->server.io().stop();
  impl_->thread.join();
  // Stopped means stopped: no connection is accepted or answered any more.
  impl_->server.CloseAll();
}

}  // namespace laneguard
