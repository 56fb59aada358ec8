// The `laneguard` binary end to end: exit statuses, argv handling, batch limits checked from the
// spans file, bad job files, and Ctrl-C in the middle of a batch.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

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
  const std::string huge(8 << 20, 'x');
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

}  // namespace
