#include "cli/job_file.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <system_error>

namespace laneguard::cli {
namespace {

using nlohmann::json;

std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string LaneList(const Config& config) {
  std::string out;
  for (const auto& [lane, limit] : config.lane_concurrency_limits) {
    if (!out.empty()) out += ", ";
    out += lane;
  }
  return out;
}

// A positive integer no larger than `max`; the error says what was wrong with the value.
std::optional<std::string> CheckPositive(const json& v, int64_t max, int64_t* out) {
  if (!v.is_number_integer() && !v.is_number_unsigned())
    return "must be a positive integer, got " + v.dump();
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(max)
                             : v.get<int64_t>() > max)
    return "must be at most " + std::to_string(max) + ", got " + v.dump();
  const int64_t value = v.get<int64_t>();
  if (value <= 0) return "must be a positive integer, got " + v.dump();
  *out = value;
  return std::nullopt;
}

}  // namespace

Result<int64_t, std::string> ParseDurationMs(std::string_view text, std::string_view flag) {
  const std::string bad =
      std::string(flag) + ": " + Quote(text) + " is not a duration (use e.g. 500ms, 30s, 1.5m, 1h)";
  double number = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || rest == begin || !std::isfinite(number)) return bad;
  const std::string_view unit(rest, static_cast<size_t>(end - rest));
  double scale;
  if (unit.empty() || unit == "s")
    scale = 1000;
  else if (unit == "ms")
    scale = 1;
  else if (unit == "m")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else
    return bad;
  const double ms = std::round(number * scale);
  if (ms <= 0) return std::string(flag) + ": " + Quote(text) + " must be more than 0 ms";
  if (ms > static_cast<double>(kMaxTimeoutMs))
    return std::string(flag) + ": " + Quote(text) + " is more than 30 days";
  return static_cast<int64_t>(ms);
}

std::string JobError::ToString() const {
  std::string out = line > 0 ? "line " + std::to_string(line) + ": " : "";
  if (!field.empty()) out += "field '" + field + "': ";
  return out + message;
}

Result<std::vector<Job>, std::vector<JobError>> ParseJobs(std::string_view text,
                                                          const Config& config) {
  static const std::set<std::string, std::less<>> kFields = {
      "id", "lane", "cmd", "timeoutMs", "maxRssMb", "metadata", "env", "cwd"};
  std::vector<Job> jobs;
  std::vector<JobError> errors;
  std::set<std::string, std::less<>> ids;
  int line_number = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    const std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      if (eol == text.size()) break;
      continue;
    }
    const size_t errors_before = errors.size();
    auto error = [&](std::string field, std::string message) {
      errors.push_back({line_number, std::move(field), std::move(message)});
    };
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      error("", "not valid JSON");
      continue;
    }
    if (!j.is_object()) {
      error("", "a job must be a JSON object, got " + std::string(j.type_name()));
      continue;
    }
    Job job;
    job.line = line_number;
    for (const auto& [key, value] : j.items())
      if (!kFields.count(key))
        error(key, "unknown field (known: id, lane, cmd, timeoutMs, maxRssMb, metadata, env, cwd)");
    job.id = "line-" + std::to_string(line_number);
    if (j.contains("id")) {
      if (!j["id"].is_string() || j["id"].get<std::string>().empty())
        error("id", "must be a non-empty string, got " + j["id"].dump());
      else
        job.id = j["id"].get<std::string>();
    }
    if (!ids.insert(job.id).second) error("id", "duplicate id " + Quote(job.id));
    job.lane = "tool_call";
    if (j.contains("lane")) {
      if (!j["lane"].is_string())
        error("lane", "must be a string, got " + j["lane"].dump());
      else
        job.lane = j["lane"].get<std::string>();
    }
    if (!config.lane_concurrency_limits.count(job.lane))
      error("lane", "unknown lane " + Quote(job.lane) + " (configured: " + LaneList(config) + ")");
    if (!j.contains("cmd")) {
      error("cmd", "missing (an argv array, or a string run by /bin/sh)");
    } else if (const json& cmd = j["cmd"]; cmd.is_string()) {
      if (cmd.get<std::string>().empty()) error("cmd", "must not be empty");
      job.spec.argv = {cmd.get<std::string>()};
      job.spec.use_shell = true;
    } else if (cmd.is_array() && !cmd.empty()) {
      for (const json& arg : cmd) {
        if (!arg.is_string()) {
          error("cmd", "argv items must be strings, got " + arg.dump());
          break;
        }
        job.spec.argv.push_back(arg.get<std::string>());
      }
    } else {
      error("cmd", "must be a non-empty argv array or a command string, got " + cmd.dump());
    }
    int64_t number = 0;
    if (j.contains("timeoutMs")) {
      if (auto e = CheckPositive(j["timeoutMs"], kMaxTimeoutMs, &number))
        error("timeoutMs", *e);
      else
        job.timeout_ms = number;
    }
    if (j.contains("maxRssMb")) {
      if (auto e = CheckPositive(j["maxRssMb"], int64_t{1} << 30, &number))
        error("maxRssMb", *e);
      else
        job.spec.max_rss_mb = number;
    }
    if (j.contains("metadata")) {
      if (!j["metadata"].is_object()) {
        error("metadata", "must be an object, got " + j["metadata"].dump());
      } else {
        for (const auto& [key, value] : j["metadata"].items()) {
          if (value.is_string())
            job.metadata.emplace_back(key, value.get<std::string>());
          else if (value.is_number() || value.is_boolean())
            job.metadata.emplace_back(key, value.dump());
          else
            error("metadata." + key, "must be a string, number or boolean, got " + value.dump());
        }
      }
    }
    if (j.contains("env")) {
      if (!j["env"].is_object()) {
        error("env", "must be an object of strings, got " + j["env"].dump());
      } else {
        for (const auto& [key, value] : j["env"].items()) {
          if (key.empty() || key.find('=') != std::string::npos)
            error("env", "bad variable name " + Quote(key));
          else if (!value.is_string())
            error("env." + key, "must be a string, got " + value.dump());
          else
            job.spec.env.emplace_back(key, value.get<std::string>());
        }
      }
    }
    if (j.contains("cwd")) {
      if (!j["cwd"].is_string() || j["cwd"].get<std::string>().empty())
        error("cwd", "must be a non-empty string, got " + j["cwd"].dump());
      else
        job.spec.cwd = j["cwd"].get<std::string>();
    }
    if (errors.size() == errors_before) jobs.push_back(std::move(job));
  }
  if (!errors.empty()) return errors;
  if (jobs.empty()) return std::vector<JobError>{{0, "", "the job file has no jobs"}};
  return jobs;
}

Result<std::vector<Job>, std::vector<JobError>> LoadJobFile(const std::string& path,
                                                            const Config& config) {
  std::ifstream in(path);
  if (!in)
    return std::vector<JobError>{
        {0, "", "cannot read " + Quote(path) + ": " + std::generic_category().message(errno)}};
  std::ostringstream text;
  text << in.rdbuf();
  return ParseJobs(text.str(), config);
}

}  // namespace laneguard::cli
