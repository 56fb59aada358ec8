// BatchRunner in-process: dispatch under the limits, progress output, the summary, cancellation.
#include "cli/batch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "support/tmp_stream.h"

namespace laneguard::cli {
namespace {

using ::testing::HasSubstr;
using testing_support::TmpStream;

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_.enable_memory_guards = false;
    config_.global_concurrency_limit = 3;
    config_.lane_concurrency_limits = {{"tool_call", 2}, {"critic", 1}};
    manager_ = ResourceBudgetManager::Create(config_).value();
    tracer_ = std::make_unique<Tracer>(TracerOptions{.enabled = false});
    calls_ = std::make_unique<WorkerCalls>(*manager_, *tracer_);
    runner_ = std::make_unique<ProcessRunner>(*calls_);
  }
  std::vector<Job> Jobs(const std::string& text) {
    auto jobs = ParseJobs(text, config_);
    EXPECT_TRUE(jobs.ok());
    return jobs.ok() ? *jobs : std::vector<Job>{};
  }

  Config config_;
  std::unique_ptr<ResourceBudgetManager> manager_;
  std::unique_ptr<Tracer> tracer_;
  std::unique_ptr<WorkerCalls> calls_;
  std::unique_ptr<ProcessRunner> runner_;
};

TEST_F(BatchTest, RunsEveryJobAndReportsQueueWaits) {
  std::string text;
  for (int i = 0; i < 8; ++i)
    text += "{\"id\": \"j" + std::to_string(i) + "\", \"lane\": \"" +
            (i % 2 ? "critic" : "tool_call") + "\", \"cmd\": [\"sleep\", \"0.05\"]}\n";
  text += "{\"id\": \"bad\", \"cmd\": \"echo oops >&2; exit 2\"}\n";
  const std::vector<Job> jobs = Jobs(text);
  TmpStream progress;
  std::vector<std::string> waited;
  std::mutex mu;
  BatchOptions options;
  options.progress = BatchOptions::Progress::kLines;
  options.progress_stream = progress.get();
  options.on_queue_wait = [&](const Job& job, double seconds) {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_GE(seconds, 0);
    waited.push_back(job.id);
  };
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, {});
  EXPECT_EQ(report.succeeded(), 8);
  EXPECT_EQ(report.failed(), 1);
  EXPECT_EQ(report.skipped(), 0);
  EXPECT_EQ(waited.size(), 9u);
  EXPECT_EQ(report.statistics.total_calls, 9);
  EXPECT_EQ(manager_->GetConcurrencyStatus().global.active, 0);
  const std::string lines = progress.ReadAll();
  EXPECT_THAT(lines, HasSubstr("FAILED bad [tool_call]: exited with code 2"));
  EXPECT_THAT(lines, HasSubstr("progress: 9/9 done, 1 failed"));

  auto summary = nlohmann::json::parse(SummaryJson(report, config_));
  EXPECT_EQ(summary["lanes"]["critic"]["maxRunning"], 1);
  EXPECT_LE(summary["lanes"]["tool_call"]["maxRunning"].get<int>(), 2);
  EXPECT_EQ(summary["results"][8]["reason"],
            "exited with code 2 after " +
                std::to_string(static_cast<int64_t>(report.jobs[8].result.duration_ms)) +
                " ms — stderr: oops");
  TmpStream table;
  PrintSummaryTable(report, config_, table.get());
  EXPECT_THAT(table.ReadAll(), HasSubstr("9 jobs: 8 succeeded, 1 failed, 0 cancelled, 0 skipped"));
}

// Job output is not ours to trust: a character cut at the tail, or bytes that are not UTF-8,
// still give a JSON summary.
TEST_F(BatchTest, JsonSummarySurvivesAnyBytesAJobPrints) {
  const std::vector<Job> jobs = Jobs(R"({"cmd": "printf '%0156d\\303\\251xyz' 0 >&2; exit 1"})"
                                     "\n"
                                     R"({"cmd": "printf 'bad \\377\\376' >&2; exit 1"})");
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, {});
  ASSERT_EQ(report.failed(), 2);
  nlohmann::json summary;
  ASSERT_NO_THROW(summary = nlohmann::json::parse(SummaryJson(report, config_)));
  EXPECT_THAT(summary["results"][1]["reason"].get<std::string>(), HasSubstr("stderr: bad"));
}

TEST_F(BatchTest, ProgressBarRedrawsOneLine) {
  const std::vector<Job> jobs = Jobs("{\"cmd\": [\"true\"]}\n{\"cmd\": [\"true\"]}\n");
  TmpStream progress;
  BatchOptions options;
  options.progress = BatchOptions::Progress::kBar;
  options.progress_stream = progress.get();
  BatchRunner(*runner_, options).Run(jobs, {});
  const std::string out = progress.ReadAll();
  EXPECT_THAT(out, HasSubstr("\r\033[K[########################] 2/2 done, 0 failed"));
  EXPECT_THAT(out, HasSubstr("ETA"));
}

TEST_F(BatchTest, CancelStopsRunningJobsAndSkipsTheRest) {
  std::string text;
  const std::string started =
      ::testing::TempDir() + "laneguard-batch-started-" + std::to_string(getpid());
  std::remove(started.c_str());
  for (int i = 0; i < 5; ++i)
    text += "{\"lane\": \"critic\", \"cmd\": \"touch " + started + "; sleep 30\"}\n";
  const std::vector<Job> jobs = Jobs(text);
  std::stop_source cancel;
  std::thread canceller([&] {  // once the first job's program is running
    for (int i = 0; i < 1000 && access(started.c_str(), F_OK) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    cancel.request_stop();
  });
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, cancel.get_token());
  canceller.join();
  EXPECT_TRUE(report.cancelled);
  EXPECT_EQ(report.jobs[0].result.outcome, ProcessOutcome::kCancelled);
  EXPECT_EQ(report.skipped(), 4);  // critic runs one at a time
  // The four waited in the manager's queue: the cancel took them out, and nothing is left held.
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes["critic"].queued, 0);
  EXPECT_EQ(manager_->GetConcurrencyStatus().global.active, 0);
  EXPECT_EQ(report.cancelled_jobs(), 1);  // stopped by us: not a failure of the job
  EXPECT_EQ(report.failed(), 0);
  auto summary = nlohmann::json::parse(SummaryJson(report, config_));
  EXPECT_EQ(summary["cancelledJobs"], 1);
  EXPECT_EQ(summary["failed"], 0);
  EXPECT_EQ(summary["lanes"]["critic"]["cancelled"], 1);
  TmpStream table;
  PrintSummaryTable(report, config_, table.get());
  EXPECT_THAT(table.ReadAll(), HasSubstr("0 succeeded, 0 failed, 1 cancelled, 4 skipped"));
  std::remove(started.c_str());
}

// A job granted its place just as the batch is cancelled never starts: it is skipped, not failed.
TEST_F(BatchTest, CancelBeforeAnyProgramStartsSkipsEverything) {
  const std::vector<Job> jobs = Jobs("{\"cmd\": [\"sleep\", \"30\"]}\n{\"cmd\": [\"true\"]}\n");
  std::stop_source cancel;
  cancel.request_stop();
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, cancel.get_token());
  EXPECT_EQ(report.skipped(), 2);
  EXPECT_EQ(report.failed(), 0);
}

// A file that cannot be written (here a directory, or a symlink, in its place) loses that job's
// output, not the job: it is said on the progress stream and in both summaries.
TEST_F(BatchTest, OutputFilesThatCannotBeWrittenAreReported) {
  const std::string dir =
      ::testing::TempDir() + "laneguard-batch-output-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/blocked.stdout");
  std::filesystem::create_symlink(dir + "/elsewhere", dir + "/linked.stdout");
  const std::vector<Job> jobs = Jobs(R"({"id": "blocked", "cmd": "echo hi"})"
                                     "\n"
                                     R"({"id": "linked", "cmd": "echo hi"})"
                                     "\n"
                                     R"({"id": "fine", "cmd": "echo hi"})");
  TmpStream progress;
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  options.progress_stream = progress.get();
  options.output_dir = dir;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, {});
  EXPECT_EQ(report.succeeded(), 3);
  EXPECT_EQ(report.output_errors(), 2);
  EXPECT_THAT(progress.ReadAll(),
              HasSubstr("--output: " + dir + "/blocked.stdout: Is a directory"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/elsewhere"));
  auto summary = nlohmann::json::parse(SummaryJson(report, config_));
  EXPECT_THAT(summary["results"][1]["outputError"].get<std::string>(), HasSubstr("linked.stdout"));
  EXPECT_FALSE(summary["results"][2].contains("outputError"));
  TmpStream table;
  PrintSummaryTable(report, config_, table.get());
  EXPECT_THAT(table.ReadAll(), HasSubstr("Output not saved"));
  std::string fine;
  std::getline(std::ifstream(dir + "/fine.stdout"), fine);
  EXPECT_EQ(fine, "hi");
  std::filesystem::remove_all(dir);
}

// Jobs on the critic lane (limit 1) that write their id to a log as they start; the high-priority
// "first" holds the lane until `queued` others wait in the manager's queue, so every later start
// is the queue's choice, whatever the timing. Returns the ids in start order.
class BatchPriorityTest : public BatchTest {
 protected:
  std::vector<std::string> RunAndLogStarts(int queued, BatchReport* report) {
    const std::string dir =
        ::testing::TempDir() + "laneguard-batch-priority-" + std::to_string(getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string log = dir + "/log", go = dir + "/go";
    auto job = [&](const std::string& id, const std::string& priority) {
      std::string cmd = "echo " + id + " >> " + log;
      if (id == "first") cmd += "; while [ ! -e " + go + " ]; do sleep 0.01; done";
      return R"({"id": ")" + id + R"(", "lane": "critic", "priority": ")" + priority +
             R"(", "cmd": ")" + cmd + "\"}\n";
    };
    jobs_ = Jobs(job("a", "low") + job("first", "high") + job("c", "normal") + job("d", "high") +
                 job("e", "low") + job("f", "normal"));
    std::thread opener([&] {  // a helper, not an assertion: it only ends the wait
      for (int i = 0; i < 2000 && manager_->GetConcurrencyStatus().lanes["critic"].queued < queued;
           ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      EXPECT_EQ(manager_->GetConcurrencyStatus().lanes["critic"].queued, queued);
      std::ofstream(go.c_str()).put('\n');
    });
    BatchOptions options;
    options.progress = BatchOptions::Progress::kNone;
    *report = BatchRunner(*runner_, options).Run(jobs_, {});
    opener.join();
    std::vector<std::string> started;
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) started.push_back(line);
    std::filesystem::remove_all(dir);
    return started;
  }

  std::vector<Job> jobs_;  // the report points into them
};

TEST_F(BatchPriorityTest, JobsStartByPriorityThenFileOrder) {
  BatchReport report;
  EXPECT_THAT(RunAndLogStarts(/*queued=*/5, &report),
              ::testing::ElementsAre("first", "d", "c", "f", "a", "e"));
  EXPECT_EQ(report.succeeded(), 6);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes["critic"].queued, 0);
  // Each job's wait in the queue: none for the first, the first's run at least for the rest.
  auto summary = nlohmann::json::parse(SummaryJson(report, config_));
  EXPECT_EQ(summary["results"][1]["id"], "first");
  EXPECT_EQ(summary["results"][1]["waitMs"], 0.0);
  for (int i : {0, 2, 3, 4, 5}) EXPECT_GT(summary["results"][i]["waitMs"].get<double>(), 0) << i;
}

// A lane whose queue holds one request: the batch keeps the rest back itself, in the same order.
TEST_F(BatchPriorityTest, AShortQueueKeepsTheOrder) {
  runner_.reset();  // everything on the old manager goes before it
  calls_.reset();
  config_.lane_queue_limits = {{"critic", 1}};
  SetUp();
  BatchReport report;
  EXPECT_THAT(RunAndLogStarts(/*queued=*/1, &report),
              ::testing::ElementsAre("first", "d", "c", "f", "a", "e"));
  EXPECT_EQ(report.succeeded(), 6);
}

// The span of a job that waited has a `queued` event and the wait as laneguard.wait_ms.
TEST_F(BatchTest, AJobThatWaitedSaysSoOnItsSpan) {
  auto exporter = std::make_unique<InMemorySpanExporter>();
  InMemorySpanExporter* spans = exporter.get();
  runner_.reset();  // everything on the old tracer goes before it
  calls_.reset();
  tracer_ = std::make_unique<Tracer>(
      TracerOptions{.processor = NewSimpleSpanProcessor(std::move(exporter))});
  calls_ = std::make_unique<WorkerCalls>(*manager_, *tracer_);
  runner_ = std::make_unique<ProcessRunner>(*calls_);
  const std::vector<Job> jobs = Jobs(R"({"id": "one", "lane": "critic", "cmd": "sleep 0.05"})"
                                     "\n"
                                     R"({"id": "two", "lane": "critic", "cmd": "true"})");
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, {});
  ASSERT_EQ(report.succeeded(), 2);
  std::map<std::string, SpanData> by_task;
  for (SpanData& span : spans->spans())
    for (const Attribute& a : span.attributes)
      if (a.key == "taskId") by_task[std::get<std::string>(a.value)] = span;
  ASSERT_EQ(by_task.size(), 2u);
  auto wait_ms = [](const SpanData& span) -> std::optional<int64_t> {
    for (const Attribute& a : span.attributes)
      if (a.key == "laneguard.wait_ms") return std::get<int64_t>(a.value);
    return std::nullopt;
  };
  auto has_queued = [](const SpanData& span) {
    return std::any_of(span.events.begin(), span.events.end(),
                       [](const SpanEvent& e) { return e.name == "queued"; });
  };
  EXPECT_FALSE(wait_ms(by_task["one"]).has_value());  // granted at once
  EXPECT_FALSE(has_queued(by_task["one"]));
  ASSERT_TRUE(wait_ms(by_task["two"]).has_value());  // waited for one's 50 ms
  EXPECT_EQ(*wait_ms(by_task["two"]), static_cast<int64_t>(report.jobs[1].wait_ms));
  EXPECT_TRUE(has_queued(by_task["two"]));
}

TEST(EscapeForTerminalTest, MakesControlCharactersVisibleAndKeepsTheRest) {
  EXPECT_EQ(EscapeForTerminal("a\x1b[31mb\n\r\t\x7f\x01"), "a\\x1b[31mb\\n\\r\\t\\x7f\\x01");
  EXPECT_EQ(EscapeForTerminal("csi \xc2\x9b"
                              "2J"),
            "csi \\u009b2J");  // C1 control, UTF-8
  EXPECT_EQ(EscapeForTerminal("caf\xc3\xa9 \xc2\xa0 \xff"), "caf\xc3\xa9 \xc2\xa0 \xff");
}

TEST_F(BatchTest, OutputFileNamesAreSafeUniqueAndKeepPlainIds) {
  const std::vector<Job> jobs = Jobs(R"({"id": "a b", "cmd": "true"})"
                                     "\n"
                                     R"({"id": "a/b", "cmd": "true"})"
                                     "\n"
                                     R"({"id": "a_b", "cmd": "true"})"
                                     "\n"
                                     R"({"id": "..", "cmd": "true"})"
                                     "\n"
                                     R"({"id": ".hidden", "cmd": "true"})"
                                     "\n"
                                     R"({"id": ")" +
                                     std::string(150, 'x') + R"(", "cmd": "true"})");
  const std::vector<std::string> names = OutputFileNames(jobs);
  ASSERT_EQ(names.size(), jobs.size());
  EXPECT_EQ(names[2], "a_b");  // plain: its own name, even though "a b" comes first
  std::set<std::string> unique(names.begin(), names.end());
  EXPECT_EQ(unique.size(), names.size());
  for (const std::string& name : names) {
    EXPECT_EQ(name.find('/'), std::string::npos) << name;
    EXPECT_NE(name[0], '.') << name;
    EXPECT_LE(name.size(), 110u) << name;
  }
}

// A failing job's reason ends with its stderr's last line, also past the 1 MB the batch captures:
// the runner keeps the tail of stderr, not its head.
TEST_F(BatchTest, TheLastStderrLineIsTheRealOneAfterMegabytesOfOutput) {
  const std::vector<Job> jobs =
      Jobs(R"({"id": "noisy", "cmd": "head -c 3000000 /dev/zero | tr '\\000' e >&2; echo >&2; )"
           R"(echo the real last line >&2; exit 1"})"
           "\n");
  BatchOptions options;
  options.progress = BatchOptions::Progress::kNone;
  BatchReport report = BatchRunner(*runner_, options).Run(jobs, {});
  ASSERT_EQ(report.jobs.size(), 1u);
  EXPECT_TRUE(report.jobs[0].result.stderr_data.ends_with("eee\nthe real last line\n"))
      << report.jobs[0].result.stderr_data.substr(0, 80);
  TmpStream table;
  PrintSummaryTable(report, config_, table.get());
  EXPECT_THAT(table.ReadAll(), HasSubstr("the real last line"));
}

}  // namespace
}  // namespace laneguard::cli
