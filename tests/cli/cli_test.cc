// The `laneguard` binary end to end: exit statuses, argv handling, batch limits checked from the
// spans file, bad job files, and Ctrl-C in the middle of a batch.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "laneguard/process.h"
#include "support/cli_fixture.h"
#include "support/processes.h"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

using CliTest = laneguard::testing_support::CliFixture;
using laneguard::testing_support::EventuallyDead;
using laneguard::testing_support::Slurp;

TEST_F(CliTest, RunExitStatuses) {
  EXPECT_EQ(Cli({"run", "--", "true"}), 0);
  EXPECT_EQ(Cli({"run", "--", "sh", "-c", "exit 1"}), 1);
  EXPECT_THAT(err_, HasSubstr("exited with code 1"));
  EXPECT_EQ(Cli({"run", "--timeout", "200ms", "--", "sleep", "30"}), 124);
  EXPECT_THAT(err_, HasSubstr("timed out"));
  EXPECT_EQ(Cli({"run", "--max-rss", "32", "--", "sh", "-c",
                 "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"}),
            137);
  EXPECT_THAT(err_, HasSubstr("killed for memory"));
  EXPECT_EQ(Cli({"run", "--", "laneguard-no-such-program"}), 127);
  EXPECT_THAT(err_, HasSubstr("laneguard-no-such-program"));
}

// From a shell prompt the command owns the terminal while it runs: it can read it (not stopped by
// SIGTTIN, which a background process group gets), and the terminal comes back afterwards, so a
// second command can read it too. script(1) gives the commands a pseudo-terminal.
TEST_F(CliTest, RunFromATerminalLetsTheCommandReadItAndHandsItBack) {
  const std::string cli = LANEGUARD_CLI_PATH;
  const std::string inner = cli + " run --timeout 5s -- sh -c 'read a; echo first:\\$a'; " + cli +
                            " run --timeout 5s -- sh -c 'read b; echo second:\\$b'";
  const std::string out = Path("tty.out");
  const std::string command = "{ printf 'one\\n'; sleep 1; printf 'two\\n'; } | script -qec \"" +
                              inner + "\" /dev/null > " + out + " 2>&1";
  const int status = std::system(command.c_str());
  const std::string text = Slurp(out);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << text;
  EXPECT_THAT(text, HasSubstr("first:one"));
  EXPECT_THAT(text, HasSubstr("second:two"));
  EXPECT_THAT(text, Not(HasSubstr("timed out")));
}

TEST_F(CliTest, RunStopsAStubbornChildAtTheEscalation) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Cli({"run", "--timeout", "300ms", "--escalation", "2", "--", "sh", "-c",
                 "trap '' TERM; sleep 30"}),
            124);
  // Not before the hard deadline (2 x 300 ms): the SIGTERM phase did not kill it.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 600ms);
  EXPECT_THAT(err_, HasSubstr("SIGKILL"));
}

TEST_F(CliTest, RunPassesArgvWithoutAShell) {
  EXPECT_EQ(Cli({"run", "--", "printf", "%s|", "$HOME", "a b", "*"}), 0);
  EXPECT_EQ(out_, "$HOME|a b|*|");
}

// The check is on a background grandchild: the direct child is always reaped by laneguard.
TEST_F(CliTest, SigintOrSigtermToLaneguardStopsTheTreeAndExits130Or143) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string pidfile = Path("grandchild.pid." + std::to_string(sig));
    const pid_t cli =
        Start({"run", "--", "sh", "-c", "sleep 30 & echo $! > " + pidfile + "; wait"});
    for (int i = 0; i < 500 && Slurp(pidfile).empty(); ++i) std::this_thread::sleep_for(10ms);
    kill(cli, sig);
    EXPECT_EQ(Wait(cli), 128 + sig);
    const pid_t grandchild = std::stoi(Slurp(pidfile));
    EXPECT_TRUE(EventuallyDead(grandchild)) << "grandchild " << grandchild << " left running";
  }
}

// Ignoring SIGCHLD is inherited across exec; laneguard must still see its children's statuses.
TEST_F(CliTest, InheritedIgnoredSigchldDoesNotHideExitStatuses) {
  std::vector<std::string> argv = {
      "/bin/sh", "-c",
      std::string("trap '' CHLD; exec ") + LANEGUARD_CLI_PATH + " run -- sh -c 'exit 7'"};
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_EQ(WEXITSTATUS(status), 7);
}

// PR_SET_PDEATHSIG: even SIGKILL to laneguard, which runs no cleanup, takes its child down.
TEST_F(CliTest, ChildDiesWhenLaneguardIsKilled) {
  const std::string pidfile = Path("child.pid");
  const pid_t cli = Start({"run", "--", "sh", "-c", "echo $$ > " + pidfile + "; exec sleep 30"});
  for (int i = 0; i < 500 && Slurp(pidfile).empty(); ++i) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(50ms);
  const pid_t child = std::stoi(Slurp(pidfile));
  kill(cli, SIGKILL);
  EXPECT_EQ(Wait(cli), 128 + SIGKILL);
  EXPECT_TRUE(EventuallyDead(child)) << "child " << child << " outlived laneguard";
}

TEST_F(CliTest, BadFlagsAreUsageErrorsNamingTheFlag) {
  EXPECT_EQ(Cli({"run", "--timeout", "soon", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--timeout: 'soon'"));
  EXPECT_EQ(Cli({"run", "--escalation", "0.5", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--escalation"));
  EXPECT_EQ(Cli({"run", "--max-rss", "-1", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--max-rss"));
  EXPECT_EQ(Cli({"run", "--lane", "gpu", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("unknown lane 'gpu'"));
  EXPECT_EQ(Cli({"run", "--config", Path("missing.json"), "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("missing.json"));
  EXPECT_EQ(Cli({"run"}), 2);
  EXPECT_EQ(Cli({"frobnicate"}), 2);
}

TEST_F(CliTest, HelpOnEverySubcommandHasExamples) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"--help"},
                                                                {"run", "--help"},
                                                                {"batch", "--help"},
                                                                {"config", "check", "--help"},
                                                                {"config", "print", "--help"}}) {
    EXPECT_EQ(Cli(args), 0);
    EXPECT_THAT(out_, HasSubstr("xample")) << args.back();
  }
}

TEST_F(CliTest, ConfigCheckAndPrint) {
  EXPECT_EQ(Cli({"config", "check", LANEGUARD_SOURCE_DIR "/examples/config/staging.json"}), 0);
  EXPECT_THAT(out_, HasSubstr("ok"));
  EXPECT_EQ(Cli({"config", "check", Write("bad.json", R"({"spanSampleRate": 2})")}), 1);
  EXPECT_THAT(err_, HasSubstr("spanSampleRate"));
  EXPECT_THAT(err_, HasSubstr("2"));
  EXPECT_EQ(Cli({"config", "print", Write("partial.json", R"({"globalConcurrencyLimit": 7})")}), 0);
  auto printed = nlohmann::json::parse(out_);
  EXPECT_EQ(printed["globalConcurrencyLimit"], 7);
  EXPECT_EQ(printed["laneConcurrencyLimits"]["forecast_model"], 1);  // default filled in
  EXPECT_EQ(printed["timeoutEscalationFactor"], 1.5);
}

// From the spans file: at no moment do more jobs of a lane run than its limit, nor more jobs in
// all than the global limit.
TEST_F(CliTest, BatchNeverExceedsLaneOrGlobalLimits) {
  const std::string config = Write("config.json", R"({"globalConcurrencyLimit": 4,
      "laneConcurrencyLimits": {"tool_call": 3, "critic": 2, "forecast_model": 1,
                                "file_read": 4, "file_write": 4}})");
  std::string jobs;
  const char* lanes[] = {"tool_call", "critic", "forecast_model"};
  for (int i = 0; i < 18; ++i)
    jobs += R"({"id": "j)" + std::to_string(i) + R"(", "lane": ")" + lanes[i % 3] +
            R"(", "cmd": ["sleep", "0.1"]})" + "\n";
  const std::string spans = Path("spans.jsonl");
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", jobs), "--config", config, "--spans", spans,
                 "--summary", "json"}),
            0)
      << err_;
  auto summary = nlohmann::json::parse(out_);
  EXPECT_EQ(summary["succeeded"], 18);
  std::vector<std::tuple<int64_t, int, std::string>> edges;
  std::ifstream in(spans);
  int count = 0;
  for (std::string line; std::getline(in, line); ++count) {
    auto span = nlohmann::json::parse(line);
    std::string lane;
    for (const auto& a : span["attributes"])
      if (a["key"] == "lane") lane = a["value"]["stringValue"];
    edges.emplace_back(std::stoll(span["startTimeUnixNano"].get<std::string>()), +1, lane);
    edges.emplace_back(std::stoll(span["endTimeUnixNano"].get<std::string>()), -1, lane);
  }
  EXPECT_EQ(count, 18);
  std::sort(edges.begin(), edges.end());
  std::map<std::string, int> running, most;
  int global = 0, most_global = 0;
  for (const auto& [time, delta, lane] : edges) {
    most[lane] = std::max(most[lane], running[lane] += delta);
    most_global = std::max(most_global, global += delta);
  }
  EXPECT_LE(most["tool_call"], 3);
  EXPECT_LE(most["critic"], 2);
  EXPECT_LE(most["forecast_model"], 1);
  EXPECT_LE(most_global, 4);
  EXPECT_GE(most_global, 2);  // the jobs did run concurrently
}

TEST_F(CliTest, BatchRejectsABadJobFileBeforeRunningAnything) {
  const std::string marker = Path("ran");
  const std::string jobs = Write("jobs.jsonl", "{\"cmd\": \"touch " + marker +
                                                   "\"}\n{\"cmd\": [\"true\"], \"lane\": "
                                                   "\"gpu\"}\n{\"lane\": \"critic\"}\nnot json\n"
                                                   "{\"cmd\": \"true\", \"timeoutMs\": -1}\n");
  EXPECT_EQ(Cli({"batch", jobs}), 2);
  EXPECT_THAT(err_, HasSubstr("line 2: field 'lane': unknown lane 'gpu'"));
  EXPECT_THAT(err_, HasSubstr("line 3: field 'cmd': missing"));
  EXPECT_THAT(err_, HasSubstr("line 4: not valid JSON"));
  EXPECT_THAT(err_, HasSubstr("line 5: field 'timeoutMs'"));
  EXPECT_THAT(err_, HasSubstr("nothing was run"));
  EXPECT_FALSE(fs::exists(marker));
}

TEST_F(CliTest, BatchReportsFailuresAndExitsNonZero) {
  const std::string jobs =
      Write("jobs.jsonl",
            "{\"id\": \"good\", \"cmd\": \"echo \\\"$GREETING\\\" > out.txt; pwd >> out.txt\", "
            "\"cwd\": \"" +
                dir_.string() +
                "\", \"env\": {\"GREETING\": \"hi there\"}}\n"
                "{\"id\": \"bad\", \"cmd\": \"echo broken >&2; exit 4\"}\n"
                "{\"id\": \"slow\", \"cmd\": [\"sleep\", \"30\"], \"timeoutMs\": 200}\n");
  EXPECT_EQ(Cli({"batch", jobs}), 1);
  EXPECT_EQ(Slurp(dir_ / "out.txt"), "hi there\n" + fs::canonical(dir_).string() + "\n");
  EXPECT_THAT(out_, HasSubstr("Failures"));
  EXPECT_THAT(out_, HasSubstr("stderr: broken"));
  EXPECT_THAT(out_, HasSubstr("timed out"));
  EXPECT_THAT(out_, HasSubstr("totalCalls 3"));
}

TEST_F(CliTest, FailFastSkipsTheRest) {
  std::string jobs = "{\"id\": \"first\", \"cmd\": \"exit 1\", \"lane\": \"forecast_model\"}\n";
  for (int i = 0; i < 5; ++i)
    jobs += "{\"id\": \"later" + std::to_string(i) +
            "\", \"cmd\": \"true\", \"lane\": \"forecast_model\"}\n";
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", jobs), "--fail-fast", "--summary", "json"}), 1);
  auto summary = nlohmann::json::parse(out_);
  EXPECT_EQ(summary["failed"], 1);
  EXPECT_EQ(summary["skipped"], 5);
}

TEST_F(CliTest, CtrlCMidBatchLeavesNoChildRunning) {
  std::string jobs;
  for (int i = 0; i < 6; ++i)
    jobs += "{\"id\": \"j" + std::to_string(i) + "\", \"lane\": \"tool_call\", \"cmd\": \"" +
            (i % 2 ? "trap '' TERM; " : "") + "sleep 30 & echo $! > " +
            Path("pid" + std::to_string(i)) + "; wait\"}\n";
  const pid_t cli = Start({"batch", Write("jobs.jsonl", jobs)});
  for (int i = 0; i < 6; ++i)
    for (int t = 0; t < 500 && Slurp(Path("pid" + std::to_string(i))).empty(); ++t)
      std::this_thread::sleep_for(10ms);
  kill(cli, SIGINT);
  EXPECT_EQ(Wait(cli), 130);
  EXPECT_THAT(out_, HasSubstr("(cancelled)"));
  for (int i = 0; i < 6; ++i) {
    const std::string text = Slurp(Path("pid" + std::to_string(i)));
    ASSERT_FALSE(text.empty()) << "job " << i << " never started";
    const pid_t pid = std::stoi(text);
    EXPECT_TRUE(EventuallyDead(pid)) << "job " << i << "'s background process left running";
  }
}

// ---- signals, output pipes, human output, flags checked up front (issue 16) -----------------

// `n` jobs, each leaving a background `sleep 30` whose pid it writes to <pids>/<i>.
std::string SleepingJobs(const fs::path& pids, int n) {
  std::string jobs;
  for (int i = 0; i < n; ++i)
    jobs += R"({"id": "j)" + std::to_string(i) + R"(", "cmd": "sleep 30 & echo $! > )" +
            (pids / std::to_string(i)).string() + R"(; wait"})" + "\n";
  return jobs;
}

// Up to 5 s for every job of SleepingJobs() to have started; their pids.
std::vector<pid_t> WaitForPids(const fs::path& pids, int n) {
  std::vector<pid_t> found;
  for (int i = 0; i < n; ++i) {
    std::string text;
    for (int t = 0; t < 500 && (text = Slurp(pids / std::to_string(i))).empty(); ++t)
      std::this_thread::sleep_for(10ms);
    if (text.empty()) return {};
    found.push_back(std::stoi(text));
  }
  return found;
}

TEST_F(CliTest, HupQuitAlrmAndTermCancelTheBatchAndLeaveNoJobRunning) {
  for (int sig : {SIGHUP, SIGQUIT, SIGALRM, SIGTERM}) {
    SCOPED_TRACE(sigabbrev_np(sig));
    const fs::path pids = dir_ / ("pids-" + std::to_string(sig));
    fs::create_directories(pids);
    const pid_t cli =
        Start({"batch", Write("jobs.jsonl", SleepingJobs(pids, 3)), "--summary", "json"});
    const std::vector<pid_t> jobs = WaitForPids(pids, 3);
    ASSERT_EQ(jobs.size(), 3u) << "the jobs never started";
    kill(cli, sig);
    EXPECT_EQ(Wait(cli), 128 + sig);
    EXPECT_FALSE(signaled_) << "killed by the signal itself: no cleanup, no summary";
    nlohmann::json summary;
    ASSERT_NO_THROW(summary = nlohmann::json::parse(out_)) << out_ << err_;
    EXPECT_EQ(summary["cancelled"], true);
    EXPECT_EQ(summary["cancelledJobs"], 3);
    EXPECT_EQ(summary["failed"], 0);  // cancelled is not failed
    for (pid_t pid : jobs) EXPECT_TRUE(EventuallyDead(pid)) << "job process " << pid << " left";
  }
}

TEST_F(CliTest, Sigusr1PrintsProgressEvenWhenQuietAndTheBatchGoesOn) {
  const fs::path pids = dir_ / "pids";
  fs::create_directories(pids);
  const pid_t cli = Start({"batch", Write("jobs.jsonl", SleepingJobs(pids, 2)), "--quiet"});
  ASSERT_EQ(WaitForPids(pids, 2).size(), 2u);
  kill(cli, SIGUSR1);
  bool printed = false;
  for (int i = 0; i < 500 && !printed; ++i) {
    printed = Slurp(dir_ / "stderr").find("progress: 0/2 done") != std::string::npos;
    if (!printed) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(printed) << Slurp(dir_ / "stderr");
  kill(cli, SIGTERM);  // still running: it ends as TERM says, not as USR1's default would
  EXPECT_EQ(Wait(cli), 128 + SIGTERM);
  EXPECT_FALSE(signaled_);
}

TEST_F(CliTest, Sigusr1ToRunSaysHowLongTheCommandHasRun) {
  const std::string started = Path("started");
  const pid_t cli =
      Start({"run", "--task", "long", "--", "sh", "-c", "touch " + started + "; sleep 30"});
  ASSERT_TRUE(laneguard::testing_support::WaitForFile(started));
  kill(cli, SIGUSR1);
  bool printed = false;
  for (int i = 0; i < 500 && !printed; ++i) {
    printed = Slurp(dir_ / "stderr").find("laneguard run: long: running for") != std::string::npos;
    if (!printed) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(printed) << Slurp(dir_ / "stderr");
  kill(cli, SIGTERM);
  EXPECT_EQ(Wait(cli), 128 + SIGTERM);
  EXPECT_FALSE(signaled_);
}

// `laneguard batch jobs.jsonl 2>&1 | head -1`: after the first line nobody reads; laneguard
// stops printing but the jobs go on to their end, and the status is theirs.
TEST_F(CliTest, ClosedOutputPipeStopsThePrintingNotTheJobs) {
  std::string jobs;
  for (int i = 0; i < 3; ++i)
    jobs += R"({"id": "j)" + std::to_string(i) + R"(", "cmd": "sleep 1.5; echo ok > )" +
            Path("done" + std::to_string(i)) + R"("})" + "\n";
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  const pid_t cli = Start({"batch", Write("jobs.jsonl", jobs)}, {}, fds[1]);
  close(fds[1]);
  std::string line;
  for (char c = 0; read(fds[0], &c, 1) == 1 && c != '\n';) line += c;
  close(fds[0]);
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(Wait(cli), 0);
  EXPECT_FALSE(signaled_) << "killed by SIGPIPE";
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(Slurp(Path("done" + std::to_string(i))), "ok\n") << "job " << i << " abandoned";
}

// laneguard ignores SIGPIPE; the programs it starts must not inherit that.
TEST_F(CliTest, CommandsStartWithSigpipeAtItsDefault) {
  EXPECT_EQ(Cli({"run", "--", "sh", "-c", "yes | head -1 > /dev/null"}), 0);
  EXPECT_THAT(err_, Not(HasSubstr("Broken pipe")));
  // laneguard ignores SIGPIPE and SIGXFSZ itself; the kernel's word on what the command ignores.
  EXPECT_EQ(Cli({"run", "--", "cat", "/proc/self/status"}), 0) << err_;
  const size_t at = out_.find("SigIgn:");
  ASSERT_NE(at, std::string::npos) << out_;
  const uint64_t ignored = std::stoull(out_.substr(at + 7), nullptr, 16);
  EXPECT_EQ(ignored & (uint64_t{1} << (SIGPIPE - 1)), 0u) << out_.substr(at, 30);
  EXPECT_EQ(ignored & (uint64_t{1} << (SIGXFSZ - 1)), 0u) << out_.substr(at, 30);
}

TEST_F(CliTest, MaxRssOutsideTheRunnersRangeIsAUsageError) {
  for (const char* mb : {"99999999999", "1073741825", "0"}) {
    EXPECT_EQ(Cli({"run", "--max-rss", mb, "--", "true"}), 2) << mb;
    EXPECT_THAT(err_, HasSubstr("--max-rss")) << mb;
    EXPECT_THAT(err_, HasSubstr("1073741824")) << mb;  // the range is named
  }
}

TEST_F(CliTest, UnwritableMetricsFileIsRefusedBeforeAnythingRuns) {
  const std::string marker = Path("ran");
  EXPECT_EQ(Cli({"run", "--metrics-file", Path("no/such/dir/m.prom"), "--", "touch", marker}), 2);
  EXPECT_THAT(err_, HasSubstr("--metrics-file"));
  EXPECT_THAT(err_, HasSubstr("No such file or directory"));
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", "{\"cmd\": \"touch " + marker + "\"}\n"),
                 "--metrics-file", dir_.string()}),
            2);
  EXPECT_THAT(err_, HasSubstr("Is a directory"));
  EXPECT_FALSE(fs::exists(marker));
}

// Checked up front, the file can still fail at the end (a full disk): that is reported, and the
// status stays the command's.
TEST_F(CliTest, MetricsFileLostAtTheEndIsReportedAndTheStatusIsTheCommands) {
  if (access("/dev/full", W_OK) != 0)
    GTEST_SKIP() << "no writable /dev/full to stand for a full disk";
  EXPECT_EQ(Cli({"run", "--metrics-file", "/dev/full", "--", "true"}), 0);
  EXPECT_THAT(err_, HasSubstr("--metrics-file /dev/full"));
  EXPECT_EQ(Cli({"run", "--metrics-file", "/dev/full", "--", "sh", "-c", "exit 3"}), 3);
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", "{\"cmd\": \"exit 1\"}\n{\"cmd\": \"true\"}\n"),
                 "--metrics-file", "/dev/full"}),
            1);
  EXPECT_THAT(err_, HasSubstr("--metrics-file /dev/full"));
}

TEST_F(CliTest, SpansFlagWinsOverAConfigThatTurnsSpansOff) {
  const std::string config = Write("off.json", R"({"enableSpanEmission": false})");
  const std::string spans = Path("spans.jsonl");
  EXPECT_EQ(Cli({"run", "--config", config, "--spans", spans, "--", "true"}), 0) << err_;
  EXPECT_THAT(err_, HasSubstr("enableSpanEmission"));
  std::ifstream in(spans);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["name"], "worker_call:tool_call");
}

TEST_F(CliTest, HumanOutputEscapesControlCharactersFromJobsAndIds) {
  EXPECT_EQ(Cli({"run", "--task", "evil\x1b[2J\ntask", "--", "false"}), 1);
  EXPECT_THAT(err_, HasSubstr("evil\\x1b[2J\\ntask"));
  EXPECT_EQ(err_.find('\x1b'), std::string::npos) << err_;
  const std::string jobs = Write(
      "jobs.jsonl",
      R"({"id": "id\u001b]0;pwned\u0007\nFAKE", "cmd": "printf '\\033[31mred\\n' >&2; exit 1"})"
      "\n");
  EXPECT_EQ(Cli({"batch", jobs}), 1);
  EXPECT_EQ(out_.find('\x1b'), std::string::npos) << out_;
  EXPECT_EQ(err_.find('\x1b'), std::string::npos) << err_;
  EXPECT_THAT(out_, HasSubstr("id\\x1b]0;pwned\\x07\\nFAKE"));
  EXPECT_THAT(out_, HasSubstr("stderr: \\x1b[31mred"));
  EXPECT_THAT(err_, HasSubstr("FAILED id\\x1b]0;pwned\\x07\\nFAKE"));
  // JSON escapes them itself: the summary keeps the real text.
  EXPECT_EQ(Cli({"batch", jobs, "--summary", "json"}), 1);
  auto summary = nlohmann::json::parse(out_);
  EXPECT_EQ(summary["results"][0]["id"], "id\x1b]0;pwned\x07\nFAKE");
  EXPECT_THAT(summary["results"][0]["reason"].get<std::string>(), HasSubstr("\x1b[31mred"));
}

// What the user's files hold is quoted in errors and warnings too: a duplicate id, an unknown lane,
// a config key, each with an escape sequence in it.
TEST_F(CliTest, ErrorsAndWarningsEscapeControlCharactersFromTheFiles) {
  const std::string jobs =
      Write("bad.jsonl", R"({"id": "x\u001b[2J", "cmd": "true"})"
                         "\n"
                         R"({"id": "x\u001b[2J", "lane": "l\u001b]0;t\u0007", "cmd": "true"})"
                         "\n");
  EXPECT_EQ(Cli({"batch", jobs}), 2);
  EXPECT_EQ(err_.find('\x1b'), std::string::npos) << err_;
  EXPECT_THAT(err_, HasSubstr("\\x1b[2J"));
  EXPECT_THAT(err_, HasSubstr("line 2"));  // the lines between errors stay lines
  const std::string config =
      Write("c.json", R"({"laneConcurrencyLimits": {"critc\u001b[1m": 2}, "bogus\u001b[5m": 1})");
  EXPECT_EQ(Cli({"config", "check", config}), 1);
  EXPECT_EQ(err_.find('\x1b'), std::string::npos) << err_;
  EXPECT_THAT(err_, HasSubstr("bogus\\x1b[5m"));
}

TEST_F(CliTest, BatchOutputDirKeepsEveryJobsOutputUnderSafeNames) {
  const std::string jobs = Write("jobs.jsonl", R"({"id": "plain", "cmd": "echo out; echo err >&2"})"
                                               "\n"
                                               R"({"id": "../escape", "cmd": "echo up"})"
                                               "\n"
                                               R"({"id": "a b", "cmd": "echo first"})"
                                               "\n"
                                               R"({"id": "a_b", "cmd": "echo second"})"
                                               "\n");
  const fs::path out = dir_ / "out";
  EXPECT_EQ(Cli({"batch", jobs, "--output", out.string(), "--summary", "json"}), 0) << err_;
  EXPECT_EQ(Slurp(out / "plain.stdout"), "out\n");
  EXPECT_EQ(Slurp(out / "plain.stderr"), "err\n");
  EXPECT_EQ(Slurp(out / "a_b.stdout"), "second\n");  // a plain id keeps its own name
  auto summary = nlohmann::json::parse(out_);
  for (int i : {1, 2}) {
    const fs::path file = summary["results"][i]["stdoutFile"].get<std::string>();
    EXPECT_EQ(file.parent_path(), out) << file;
    EXPECT_EQ(Slurp(file), i == 1 ? "up\n" : "first\n") << file;
  }
  EXPECT_FALSE(fs::exists(dir_ / "escape.stdout"));
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), 8);

  EXPECT_EQ(Cli({"batch", jobs, "--output", jobs}), 2);  // a file, not a directory
  EXPECT_THAT(err_, HasSubstr("--output"));
  EXPECT_EQ(Cli({"batch", "--help"}), 0);
  EXPECT_THAT(out_, HasSubstr("stdout is discarded"));
}

TEST_F(CliTest, BatchStdoutLinesGoIntoTheJsonSummary) {
  const std::string jobs =
      Write("jobs.jsonl", R"({"id": "three", "cmd": "printf 'one\ntwo\nthree\n'"})"
                          "\n"
                          R"({"id": "none", "cmd": "true"})"
                          "\n");
  EXPECT_EQ(Cli({"batch", jobs, "--stdout-lines", "2", "--summary", "json"}), 0) << err_;
  auto summary = nlohmann::json::parse(out_);
  EXPECT_EQ(summary["results"][0]["stdoutLines"], nlohmann::json({"two", "three"}));
  EXPECT_EQ(summary["results"][1]["stdoutLines"], nlohmann::json::array());
  EXPECT_EQ(Cli({"batch", jobs, "--summary", "json"}), 0);  // not asked for: not there
  EXPECT_FALSE(nlohmann::json::parse(out_)["results"][0].contains("stdoutLines"));
  EXPECT_EQ(Cli({"batch", jobs, "--stdout-lines", "1001"}), 2);
  EXPECT_THAT(err_, HasSubstr("--stdout-lines"));
}

TEST_F(CliTest, MessagesANewUserMeetsNameTheProblem) {
  EXPECT_EQ(Cli({"--version"}), 0);
  EXPECT_THAT(out_, ::testing::MatchesRegex("laneguard [0-9]+\\.[0-9]+\\.[0-9]+\n"));
  EXPECT_EQ(Cli({"bogus"}), 2);
  EXPECT_THAT(err_, HasSubstr("unknown command 'bogus' (commands: run, batch, serve, config)"));
  EXPECT_EQ(Cli({"config", "chek", "x.json"}), 2);
  EXPECT_THAT(err_, HasSubstr("laneguard config: unknown command 'chek' (commands: check, print)"));
  EXPECT_EQ(Cli({"run", "--log-level", "verbose", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--log-level: 'verbose' is not one of debug, info, warning, error"));
  EXPECT_THAT(err_, Not(HasSubstr("config key")));
  EXPECT_EQ(Cli({"run", "ls", "-d", "/tmp"}), 2);
  EXPECT_THAT(err_, HasSubstr("put the command after --: laneguard run -- ls -d /tmp"));
  EXPECT_EQ(Cli({"run", "--timeout", "5s", "ls", "-d", "/tmp"}), 2);
  EXPECT_THAT(err_, HasSubstr("laneguard run --timeout 5s -- ls -d /tmp"));
}

}  // namespace

// --- Input validation a new user meets (issue 16): bad config and job files,
// flags. ---
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using CliInputTest = laneguard::testing_support::CliFixture;

size_t Count(const std::string& text, const std::string& word) {
  size_t n = 0;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) ++n;
  return n;
}

TEST_F(CliInputTest, ConfigErrorsNameTheFileOnce) {
  const std::string empty = Write("empty.json", "");
  EXPECT_EQ(Cli({"config", "check", empty}), 1);
  EXPECT_EQ(Count(err_, "empty.json"), 1u) << err_;
  EXPECT_EQ(Cli({"run", "--config", empty, "--", "true"}), 2);
  EXPECT_EQ(Count(err_, "empty.json"), 1u) << err_;
  EXPECT_THAT(err_, HasSubstr("--config"));
  EXPECT_EQ(Cli({"config", "print", empty}), 1);
  EXPECT_EQ(Count(err_, "empty.json"), 1u) << err_;
}

TEST_F(CliInputTest, ADirectoryIsReportedAsADirectory) {
  const std::string dir = dir_.string();
  EXPECT_EQ(Cli({"config", "check", dir}), 1);
  EXPECT_THAT(err_, HasSubstr("is a directory"));
  EXPECT_THAT(err_, Not(HasSubstr("JSON")));
  EXPECT_EQ(Cli({"batch", dir}), 2);
  EXPECT_THAT(err_, HasSubstr("is a directory"));
  EXPECT_THAT(err_, Not(HasSubstr("JSON")));
  EXPECT_EQ(Cli({"run", "--config", dir, "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("is a directory"));
}

TEST_F(CliInputTest, DeeplyNestedInputIsAnErrorNotACrash) {
  const size_t depth = 100'000;
  std::string deep;
  for (size_t i = 0; i < depth; ++i) deep += "{\"a\":";
  deep += "1" + std::string(depth, '}');
  EXPECT_EQ(Cli({"config", "check", Write("d.json", deep)}), 1);
  EXPECT_THAT(err_, HasSubstr("unknown key"));
  EXPECT_LT(err_.size(), 1000u);
  const std::string jobs =
      Write("deep.jsonl", R"({"id":"a","cmd":"true","metadata":{"k":)" + std::string(depth, '[') +
                              std::string(depth, ']') + "}}\n");
  EXPECT_EQ(Cli({"batch", jobs}), 2);
  EXPECT_THAT(err_, HasSubstr("metadata.k"));
  EXPECT_LT(err_.size(), 1000u);
}

TEST_F(CliInputTest, HugeValuesAreNotEchoedInFull) {
  const std::string huge(1'000'000, 'x');  // the config file's cap is 1 MiB
  EXPECT_EQ(Cli({"config", "check", Write("huge.json", "{\"unknown\": \"" + huge + "\"}")}), 1);
  EXPECT_THAT(err_, HasSubstr("unknown"));
  EXPECT_LT(err_.size(), 1000u);
}

// Each passed `config check` and then broke `run` (timeouts that never fired,
// bad_alloc).
TEST_F(CliInputTest, ConfigCheckEnforcesUpperBounds) {
  EXPECT_EQ(Cli({"config", "check", Write("tick.json", R"({"timerTickMs": 100000000})")}), 1);
  EXPECT_THAT(err_, HasSubstr("timerTickMs"));
  EXPECT_EQ(Cli({"config", "check", Write("cap.json", R"({"metricsCapacity": 1e8})")}), 1);
  EXPECT_THAT(err_, HasSubstr("metricsCapacity"));
  EXPECT_EQ(Cli({"config", "check",
                 Write("lane.json", R"({"laneConcurrencyLimits": {"critic": 2000000}})")}),
            1);
  EXPECT_THAT(err_, Not(HasSubstr(">= 1")));
}

TEST_F(CliInputTest, SuspiciousConfigsLoadWithAWarning) {
  const std::string config = Write(
      "warn.json", R"({"maxRssMb": 100, "maxRssMb": 200, "laneConcurrencyLimits": {"critc": 2}})");
  EXPECT_EQ(Cli({"config", "check", config}), 0);
  EXPECT_THAT(err_, HasSubstr("laneguard: warning: "));
  EXPECT_THAT(err_, HasSubstr("'maxRssMb' is given more than once"));
  EXPECT_THAT(err_, HasSubstr("did you mean 'critic'?"));
  EXPECT_EQ(Cli({"run", "--config", config, "--", "true"}), 0);
  EXPECT_THAT(err_, HasSubstr("did you mean 'critic'?"));
}

TEST_F(CliInputTest, ABadJobFilePrintsAtMostTwentyErrors) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += "{\"lane\": \"nope\"}\n";
  EXPECT_EQ(Cli({"batch", Write("bad.jsonl", text)}), 2);
  EXPECT_EQ(Count(err_, "bad.jsonl: line "), 20u);
  EXPECT_THAT(err_, HasSubstr("more errors"));
  EXPECT_THAT(err_, HasSubstr("nothing was run"));
}

TEST_F(CliInputTest, NulInAJobsArgvIsRefused) {
  const std::string marker = Path("ran");
  const std::string jobs = Write("nul.jsonl", R"({"id":"a","cmd":["touch", ")" + marker +
                                                  R"(\u0000x"]})"
                                                  "\n");
  EXPECT_EQ(Cli({"batch", jobs}), 2);
  EXPECT_THAT(err_, HasSubstr("field 'cmd'"));
  EXPECT_THAT(err_, HasSubstr("NUL"));
  EXPECT_FALSE(fs::exists(marker));
}

TEST_F(CliInputTest, TimeoutFlagSyntax) {
  EXPECT_EQ(Cli({"run", "--timeout", "", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--timeout: ''"));
  EXPECT_EQ(Cli({"run", "--timeout", "1m30s", "--", "true"}), 0) << err_;
  EXPECT_EQ(Cli({"run", "--timeout", "1m30", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--timeout: '1m30'"));
}

TEST_F(CliInputTest, BatchDashReadsStandardInput) {
  const std::string jobs = Write("in.jsonl", R"({"id":"from-stdin","cmd":"true"})"
                                             "\n");
  const std::string command = std::string("'") + LANEGUARD_CLI_PATH + "' batch --quiet " +
                              "--summary json - < '" + jobs + "' > '" + Path("out") + "' 2> '" +
                              Path("err") + "'";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << Slurp(Path("err"));
  EXPECT_THAT(Slurp(Path("out")), HasSubstr("from-stdin"));
}

// An endless input (/dev/zero, `batch -` fed forever) read until memory ran out. Each run gets
// 30 s and 200 MB of RSS, so a regression fails here instead of taking the machine's memory.
TEST_F(CliInputTest, EndlessInputStopsAtTheCapPromptly) {
  auto wait_bounded = [this](pid_t pid) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    siginfo_t info{};
    while (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0) {
      std::ifstream status("/proc/" + std::to_string(pid) + "/status");
      std::string word;
      long rss_kb = 0;
      while (status >> word)
        if (word == "VmRSS:" && status >> rss_kb) break;
      if (std::chrono::steady_clock::now() > deadline || rss_kb > 200'000) kill(pid, SIGKILL);
      std::this_thread::sleep_for(10ms);
    }
    return Wait(pid);
  };
  EXPECT_EQ(wait_bounded(Start({"config", "check", "/dev/zero"})), 1);
  EXPECT_THAT(err_, HasSubstr("/dev/zero: larger than 1 MiB, the limit for a config file"));
  EXPECT_EQ(wait_bounded(Start({"run", "--config", "/dev/zero", "--", "true"})), 2);
  EXPECT_THAT(err_, HasSubstr("larger than 1 MiB"));
  EXPECT_EQ(wait_bounded(Start({"batch", "/dev/zero"})), 2);
  EXPECT_THAT(err_, HasSubstr("/dev/zero: line 1: longer than 1 MiB"));

  // `batch -` on a pipe that never ends: blank lines of 4 KB, until laneguard stops reading.
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  const auto old_sigpipe = ::signal(SIGPIPE, SIG_IGN);
  const int saved_stdin = dup(STDIN_FILENO);
  dup2(fds[0], STDIN_FILENO);  // the child's stdin (dup2 clears close-on-exec)
  const pid_t pid = Start({"batch", "-"});
  dup2(saved_stdin, STDIN_FILENO);
  close(saved_stdin);
  close(fds[0]);
  std::thread writer([fd = fds[1]] {
    const std::string blank_line = std::string(4095, ' ') + "\n";
    while (write(fd, blank_line.data(), blank_line.size()) > 0) {
    }
    close(fd);
  });
  EXPECT_EQ(wait_bounded(pid), 2);
  writer.join();  // EPIPE once laneguard is gone
  ::signal(SIGPIPE, old_sigpipe);
  EXPECT_THAT(err_, HasSubstr("<stdin>: larger than 256 MiB, the limit for a job file"));
  EXPECT_THAT(err_, HasSubstr("nothing was run"));
}

// A batch holds a few descriptors per running job. Under a low hard limit, running out is
// back-pressure (jobs wait for descriptors), not "Too many open files" failures; under a low soft
// limit laneguard raises it, and the jobs still get the original soft limit.
TEST_F(CliTest, BatchUnderALowDescriptorLimitRunsEveryJob) {
  std::string lines;
  for (int i = 0; i < 40; ++i)
    lines += R"({"id":"j)" + std::to_string(i) + R"(","cmd":["sleep","0.2"]})" + "\n";
  const std::string jobs = Write("jobs.jsonl", lines);
  const std::string config =
      Write("config.json",
            R"({"globalConcurrencyLimit": 40, "laneConcurrencyLimits": {"tool_call": 40}})");
  for (const std::string ulimit : {"ulimit -n 48", "ulimit -Sn 48"}) {
    const std::string command = "sh -c '" + ulimit + " && exec " + LANEGUARD_CLI_PATH +
                                " batch --quiet --summary json --config " + config + " " + jobs +
                                "' > " + Path("out") + " 2> " + Path("err");
    const int status = std::system(command.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << ulimit << ": " << Slurp(Path("err")) << Slurp(Path("out")).substr(0, 2000);
    EXPECT_THAT(Slurp(Path("out")), Not(HasSubstr("Too many open files"))) << ulimit;
  }
  const std::string command = std::string("sh -c 'ulimit -Sn 48 && exec ") + LANEGUARD_CLI_PATH +
                              " run -- sh -c \"ulimit -Sn\"' > " + Path("out");
  ASSERT_EQ(std::system(command.c_str()), 0);
  EXPECT_EQ(Slurp(Path("out")), "48\n");
}

// kill -9 of laneguard leaves its jobs running in its per-call cgroups; the next start kills them,
// removes the cgroups and says so on stderr. Simulated: a leftover cgroup of a dead laneguard pid
// with a process in it, under a private cgroup that the laneguard under test is started in.
TEST_F(CliTest, NextStartKillsAndReportsLeftoversOfAKilledLaneguard) {
  const laneguard::IsolationSupport iso = laneguard::DetectIsolation();
  const std::string base = !iso.v2_parent.empty() ? iso.v2_parent : iso.v1_parent;
  if (base.empty())
    GTEST_SKIP() << "no writable cgroup here (" << iso.detail
                 << "); ProcessRunnerTest covers the cleanup on a fake tree";
  const std::string home = base + "/lg-cli-test-" + std::to_string(getpid());
  ASSERT_TRUE(fs::create_directory(home)) << home;
  const std::string stale = home + "/laneguard-999999999-3";  // above pid_max: never alive
  ASSERT_TRUE(fs::create_directory(stale));
  const pid_t orphan = fork();
  if (orphan == 0) {
    execlp("sleep", "sleep", "300", nullptr);
    _exit(127);
  }
  std::ofstream(stale + "/cgroup.procs") << orphan;
  const std::string command = "sh -c 'echo $$ > " + home + "/cgroup.procs && exec " +
                              LANEGUARD_CLI_PATH + " run -- true' 2> " + Path("err");
  const int status = std::system(command.c_str());
  int orphan_status = 0;
  waitpid(orphan, &orphan_status, 0);
  for (const auto& entry : fs::directory_iterator(home))
    if (entry.is_directory()) rmdir(entry.path().c_str());
  rmdir(home.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << Slurp(Path("err"));
  EXPECT_TRUE(WIFSIGNALED(orphan_status) && WTERMSIG(orphan_status) == SIGKILL);
  EXPECT_THAT(Slurp(Path("err")),
              HasSubstr("cleaned up after dead laneguard process (pid 999999999): 1 leftover "
                        "cgroup, 1 process still running in them killed"));
}

// Ctrl-Z on a terminal stops the command; laneguard then stops too, as a shell job does, so the
// shell gets the terminal back; `fg` continues laneguard, which hands the terminal back to the
// command and continues it. script(1) gives an interactive shell (job control) a pseudo-terminal;
// the command stops itself with SIGTSTP, as Ctrl-Z would.
TEST_F(CliTest, CtrlZStopsLaneguardAsAShellJobAndFgContinuesTheCommand) {
  const std::string session =
      Write("session.sh", std::string(LANEGUARD_CLI_PATH) +
                              " run --timeout 5s -- sh -c 'kill -TSTP $$; echo resumed'\n"
                              "echo \"status=$?\"\nfg\necho \"fg=$?\"\n");
  const std::string out = Path("tty.out");
  const std::string command =
      "script -qec 'sh -i " + session + "' /dev/null < /dev/null > " + out + " 2>&1";
  const int status = std::system(command.c_str());
  const std::string text = Slurp(out);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << text;
  EXPECT_THAT(text, HasSubstr("status=148")) << "laneguard did not stop with SIGTSTP";
  EXPECT_THAT(text, HasSubstr("resumed"));
  EXPECT_THAT(text, HasSubstr("fg=0"));
  EXPECT_THAT(text, Not(HasSubstr("timed out")));
}

}  // namespace
