#include "cli/job_file.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "base/json_input.h"

namespace laneguard::cli {
namespace {

using internal::JsonPreview;
using internal::QuoteBounded;
using nlohmann::json;

const std::vector<std::string>& KnownFields() {
  static const std::vector<std::string> fields = {
      "id", "lane", "cmd", "timeoutMs", "maxRssMb", "metadata", "env", "cwd", "priority"};
  return fields;
}

std::string LaneList(const Config& config) {
  std::string out;
  for (const auto& [lane, limit] : config.lane_concurrency_limits) {
    if (!out.empty()) out += ", ";
    out += lane;
  }
  return out;
}

// A positive integer no larger than `max` (3.0 counts as 3, as in the config); the error says
// what was wrong with the value.
std::optional<std::string> CheckPositive(const json& v, int64_t max, int64_t* out) {
  const std::optional<int64_t> value = internal::JsonAsInteger(v);
  const bool too_big = value ? *value > max : internal::JsonIsIntegral(v) && v.get<double>() > 0;
  if (too_big) return "must be at most " + std::to_string(max) + ", got " + JsonPreview(v);
  if (!value || *value <= 0) return "must be a positive integer, got " + JsonPreview(v);
  *out = *value;
  return std::nullopt;
}

// execve takes C strings: a NUL would silently cut an argument, a name or a path short.
bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }
constexpr const char* kNulMessage = "must not contain a NUL character (\\u0000)";

// One duration term, a decimal number and its unit ("1.5m"), in ms; advances `text` past it.
// A number with nothing after it is seconds and sets `bare`. nullopt when it is not a term.
std::optional<double> DurationTermMs(std::string_view& text, bool* bare) {
  size_t digits = 0, i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    digits += text[i++] != '.';
  if (digits == 0) return std::nullopt;
  double number = 0;
  auto [rest, ec] = std::from_chars(text.data(), text.data() + i, number);
  if (ec != std::errc() || rest != text.data() + i || !std::isfinite(number)) return std::nullopt;
  text.remove_prefix(i);
  *bare = text.empty();
  if (*bare) return number * 1000;
  // "ms" before "m": the longest unit that matches.
  for (const auto& [unit, scale] : {std::pair<std::string_view, double>{"ms", 1},
                                    {"s", 1000},
                                    {"m", 60'000},
                                    {"h", 3'600'000}}) {
    if (text.starts_with(unit)) {
      text.remove_prefix(unit.size());
      return number * scale;
    }
  }
  return std::nullopt;
}

}  // namespace

Result<int64_t> ParseDurationMs(std::string_view text, std::string_view flag) {
  const std::string what = std::string(flag) + ": " + QuoteBounded(text);
  const auto error = [&](std::string_view why) {
    return Error(ErrorCode::kInvalidArgument, std::string(flag), std::string(text),
                 what + std::string(why));
  };
  const auto bad = [&] {
    return error(" is not a duration (use e.g. 500ms, 30s, 1m30s, 1.5h; a bare number is seconds)");
  };
  std::string_view rest = text;
  double ms = 0;
  int terms = 0;
  bool bare = false;
  while (!rest.empty()) {
    auto term = DurationTermMs(rest, &bare);
    if (!term || (bare && terms > 0)) return bad();  // "1m30" is ambiguous: 30 what?
    ms += *term;
    ++terms;
  }
  if (terms == 0) return bad();
  ms = std::round(ms);
  if (ms <= 0) return error(" must be more than 0 ms");
  if (ms > static_cast<double>(kMaxTimeoutMs)) return error(" is more than 30 days");
  return static_cast<int64_t>(ms);
}

Error JobError(int line, std::string_view field, std::string_view message) {
  const std::string where = line > 0 ? "line " + std::to_string(line) : "";
  std::string position = where;
  if (!field.empty()) position += (where.empty() ? "" : ": ") + std::string(field);
  std::string sentence = where.empty() ? "" : where + ": ";
  if (!field.empty()) sentence += "field '" + std::string(field) + "': ";
  sentence += message;
  return Error(ErrorCode::kInvalidArgument, std::move(position), "", std::move(sentence));
}

std::string FormatJobErrors(const std::vector<Error>& errors, std::string_view prefix, size_t max) {
  std::string out;
  for (size_t i = 0; i < errors.size() && i < max; ++i)
    out += std::string(prefix) + errors[i].message() + "\n";
  if (errors.size() > max)
    out += std::string(prefix) + "and " + std::to_string(errors.size() - max) + " more errors\n";
  return out;
}

namespace {

// Checks one parsed line, field by field, into a Job; every problem goes to `errors`.
class LineChecker {
 public:
  LineChecker(int line, const json& j, const Config& config, std::vector<Error>& errors)
      : j_(j), config_(config), errors_(errors) {
    job_.line = line;
  }

  Job Check() {
    for (const auto& [key, value] : j_.items())
      if (std::find(KnownFields().begin(), KnownFields().end(), key) == KnownFields().end())
        AddError(internal::Truncate(key),
                 "unknown field (known: id, lane, cmd, timeoutMs, maxRssMb, metadata, env, cwd, "
                 "priority)" +
                     internal::DidYouMean(key, KnownFields()));
    CheckIdAndLane();
    CheckCmd();
    CheckLimits();
    CheckPriority();
    CheckMetadata();
    CheckEnv();
    CheckCwd();
    return std::move(job_);
  }

 private:
  void AddError(std::string_view field, std::string_view message) {
    errors_.push_back(JobError(job_.line, field, message));
  }
  const json* Field(const char* name) const {
    auto it = j_.find(name);
    return it == j_.end() ? nullptr : &*it;
  }

  void CheckIdAndLane() {
    job_.id = "line-" + std::to_string(job_.line);
    if (const json* id = Field("id")) {
      if (!id->is_string() || id->get_ref<const std::string&>().empty())
        AddError("id", "must be a non-empty string, got " + JsonPreview(*id));
      else
        job_.id = id->get<std::string>();
    }
    job_.lane = "tool_call";
    if (const json* lane = Field("lane")) {
      if (!lane->is_string())
        AddError("lane", "must be a string, got " + JsonPreview(*lane));
      else
        job_.lane = lane->get<std::string>();
    }
    if (!config_.lane_concurrency_limits.contains(job_.lane)) {
      std::vector<std::string> lanes;
      for (const auto& [lane, limit] : config_.lane_concurrency_limits) lanes.push_back(lane);
      AddError("lane", "unknown lane " + QuoteBounded(job_.lane) + " (configured: " +
                           LaneList(config_) + ")" + internal::DidYouMean(job_.lane, lanes));
    }
  }

  void CheckCmd() {
    const json* cmd = Field("cmd");
    if (cmd == nullptr) {
      AddError("cmd", "missing (an argv array, or a string run by /bin/sh)");
    } else if (cmd->is_string()) {
      const std::string& text = cmd->get_ref<const std::string&>();
      if (text.empty()) AddError("cmd", "must not be empty");
      if (HasNul(text)) AddError("cmd", kNulMessage);
      job_.spec.argv = {text};
      job_.spec.use_shell = true;
    } else if (cmd->is_array() && !cmd->empty()) {
      for (const json& arg : *cmd) {
        if (!arg.is_string()) {
          AddError("cmd", "argv items must be strings, got " + JsonPreview(arg));
          break;
        }
        if (HasNul(arg.get_ref<const std::string&>())) {
          AddError("cmd", "argv item " + std::to_string(job_.spec.argv.size()) + " " + kNulMessage);
          break;
        }
        job_.spec.argv.push_back(arg.get<std::string>());
      }
    } else {
      AddError("cmd",
               "must be a non-empty argv array or a command string, got " + JsonPreview(*cmd));
    }
  }

  void CheckLimits() {
    int64_t number = 0;
    if (const json* timeout = Field("timeoutMs")) {
      if (auto e = CheckPositive(*timeout, kMaxTimeoutMs, &number))
        AddError("timeoutMs", *e);
      else
        job_.timeout_ms = number;
    }
    if (const json* rss = Field("maxRssMb")) {
      if (auto e = CheckPositive(*rss, kMaxMemoryMb, &number))
        AddError("maxRssMb", *e);
      else
        job_.spec.max_rss_mb = number;
    }
  }

  void CheckPriority() {
    const json* priority = Field("priority");
    if (priority == nullptr) return;
    for (const Priority p : {Priority::kHigh, Priority::kNormal, Priority::kLow}) {
      if (priority->is_string() && priority->get_ref<const std::string&>() == ToString(p)) {
        job_.priority = p;
        return;
      }
    }
    AddError("priority", "must be \"high\", \"normal\" or \"low\", got " + JsonPreview(*priority));
  }

  void CheckMetadata() {
    const json* metadata = Field("metadata");
    if (metadata == nullptr) return;
    if (!metadata->is_object()) {
      AddError("metadata", "must be an object, got " + JsonPreview(*metadata));
      return;
    }
    for (const auto& [key, value] : metadata->items()) {
      if (value.is_string())
        job_.metadata.emplace_back(key, value.get<std::string>());
      else if (value.is_number() || value.is_boolean())
        job_.metadata.emplace_back(key, value.dump());  // a scalar: short, no recursion
      else
        AddError("metadata." + internal::Truncate(key),
                 "must be a string, number or boolean, got " + JsonPreview(value));
    }
  }

  void CheckEnv() {
    const json* env = Field("env");
    if (env == nullptr) return;
    if (!env->is_object()) {
      AddError("env", "must be an object of strings, got " + JsonPreview(*env));
      return;
    }
    for (const auto& [key, value] : env->items()) {
      const std::string field = "env." + internal::Truncate(key);
      if (key.empty() || key.find('=') != std::string::npos)
        AddError("env", "bad variable name " + QuoteBounded(key));
      else if (HasNul(key))
        AddError("env", "variable name " + QuoteBounded(key) + " " + kNulMessage);
      else if (!value.is_string())
        AddError(field, "must be a string, got " + JsonPreview(value));
      else if (HasNul(value.get_ref<const std::string&>()))
        AddError(field, kNulMessage);
      else
        job_.spec.env.emplace_back(key, value.get<std::string>());
    }
  }

  void CheckCwd() {
    const json* cwd = Field("cwd");
    if (cwd == nullptr) return;
    if (!cwd->is_string() || cwd->get_ref<const std::string&>().empty())
      AddError("cwd", "must be a non-empty string, got " + JsonPreview(*cwd));
    else if (HasNul(cwd->get_ref<const std::string&>()))
      AddError("cwd", kNulMessage);
    else
      job_.spec.cwd = cwd->get<std::string>();
  }

  const json& j_;
  const Config& config_;
  std::vector<Error>& errors_;
  Job job_;
};

// Duplicate fields of one line as warnings, at most kMaxPrintedJobErrors in all.
void WarnAboutDuplicates(int line, const internal::ParsedJson& parsed, size_t* count,
                         std::vector<std::string>* warnings) {
  if (warnings == nullptr) return;
  for (const std::string& key : parsed.duplicate_keys) {
    if ((*count)++ < kMaxPrintedJobErrors)
      warnings->push_back("line " + std::to_string(line) + ": field '" + key +
                          "' is given more than once; the last value is used");
  }
  *count += parsed.more_duplicate_keys;
}

// Checks a job file one line at a time, so a file read as it arrives (LoadJobFile) is never
// held whole: only the jobs it yields are.
class JobFileParser {
 public:
  JobFileParser(const Config& config, std::vector<std::string>* warnings)
      : config_(config), warnings_(warnings) {}

  void AddLine(int number, std::string_view line) {
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;
    const internal::ParsedJson parsed = internal::ParseJsonNotingDuplicates(line);
    if (!parsed.error.empty()) {
      errors_.push_back(JobError(number, "", "not valid JSON: " + parsed.error));
      return;
    }
    if (!parsed.value.is_object()) {
      errors_.push_back(JobError(
          number, "", "a job must be a JSON object, got " + std::string(parsed.value.type_name())));
      return;
    }
    WarnAboutDuplicates(number, parsed, &duplicate_fields_, warnings_);
    const size_t errors_before = errors_.size();
    Job job = LineChecker(number, parsed.value, config_, errors_).Check();
    if (!ids_.insert(job.id).second)
      errors_.push_back(JobError(number, "id", "duplicate id " + QuoteBounded(job.id)));
    if (errors_.size() == errors_before) jobs_.push_back(std::move(job));
  }

  Result<std::vector<Job>, std::vector<Error>> Finish() && {
    if (warnings_ != nullptr && duplicate_fields_ > kMaxPrintedJobErrors)
      warnings_->push_back("and " + std::to_string(duplicate_fields_ - kMaxPrintedJobErrors) +
                           " more fields given more than once");
    if (!errors_.empty()) return std::move(errors_);
    if (jobs_.empty()) return std::vector<Error>{JobError(0, "", "the job file has no jobs")};
    return std::move(jobs_);
  }

 private:
  const Config& config_;
  std::vector<std::string>* warnings_;
  std::vector<Job> jobs_;
  std::vector<Error> errors_;
  std::set<std::string, std::less<>> ids_;
  size_t duplicate_fields_ = 0;
};

}  // namespace

Result<std::vector<Job>, std::vector<Error>> ParseJobs(std::string_view text, const Config& config,
                                                       std::vector<std::string>* warnings) {
  JobFileParser parser(config, warnings);
  int number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    parser.AddLine(++number, text.substr(pos, eol - pos));
    pos = eol + 1;
  }
  return std::move(parser).Finish();
}

Result<std::vector<Job>, std::vector<Error>> LoadJobFile(const std::string& path,
                                                         const Config& config,
                                                         std::vector<std::string>* warnings) {
  const internal::InputCaps caps = {
      .max_bytes = kMaxJobFileBytes,
      .what = "job file",
      .advice = "split the jobs into several files and run a batch for each",
      .max_line_bytes = kMaxJobLineBytes,
      .line_advice =
          "a job is a command and a few fields; put large data in a file the job "
          "names (in cmd, env or cwd)",
  };
  // Warnings go to a scratch list: a file that cannot be read whole has no warnings worth telling.
  std::vector<std::string> own_warnings;
  JobFileParser parser(config, warnings != nullptr ? &own_warnings : nullptr);
  internal::InputError error;
  size_t lines = 0;
  auto add_line = [&](int number, std::string_view line) {
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) return true;
    if (++lines > kMaxJobsPerFile) {
      error = {number, "more than " + std::to_string(kMaxJobsPerFile) +
                           " jobs, the limit for a job file (stopped reading there): " +
                           std::string(caps.advice)};
      return false;
    }
    parser.AddLine(number, line);
    return true;
  };
  if (!internal::ReadInputLines(path, caps, /*allow_stdin=*/true, &error, add_line))
    return std::vector<Error>{error.line > 0 ? JobError(error.line, "", error.message)
                                             : Error(error.code, "", "", std::move(error.message))};
  auto jobs = std::move(parser).Finish();
  if (warnings != nullptr)
    for (std::string& w : own_warnings) warnings->push_back(std::move(w));
  return jobs;
}

}  // namespace laneguard::cli
