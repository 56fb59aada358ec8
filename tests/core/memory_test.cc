#include "laneguard/memory.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/cgroup_paths.h"
#include "core/proc_memory_probe.h"
#include "laneguard/clock.h"

namespace laneguard {
namespace {

// Keeps allocations observable so the compiler cannot drop malloc/memset/free as dead code.
void* volatile g_sink = nullptr;

bool ProcSelfCgroupHasV1Memory() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    auto first = line.find(':');
    auto second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::stringstream controllers(line.substr(first + 1, second - first - 1));
    std::string c;
    while (std::getline(controllers, c, ','))
      if (c == "memory") return true;
  }
  return false;
}

TEST(MemoryProbe, RssIsPositiveAndPeakIsAtLeastRss) {
  auto probe = NewProcMemoryProbe();
  MemorySnapshot s = probe->Sample();
  EXPECT_GT(s.rss_mb, 0);
  EXPECT_GT(s.peak_rss_mb, 0);
  // VmHWM (kB) and statm (pages) are read a moment apart; allow a little slack.
  EXPECT_GE(s.peak_rss_mb, s.rss_mb - 1.0);
  EXPECT_GE(s.heap_total_mb, s.heap_used_mb);
  EXPECT_GT(s.heap_used_mb, 0);
  // The probe leaves the timestamps to the caller.
  EXPECT_EQ(s.timestamp_unix_nanos, 0);
  EXPECT_TRUE(s.timestamp.empty());
}

TEST(MemoryProbe, HeapUsedGrowsByA64MbAllocationAndShrinksOnFree) {
  auto probe = NewProcMemoryProbe();
  constexpr size_t kBytes = 64u << 20;
  const MemorySnapshot before = probe->Sample();

  char* block = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(block, nullptr);
  std::memset(block, 0x5a, kBytes);
  g_sink = block;
  const MemorySnapshot during = probe->Sample();
  EXPECT_EQ(static_cast<volatile char*>(g_sink)[kBytes - 1], 0x5a);

  EXPECT_NEAR(during.heap_used_mb - before.heap_used_mb, 64.0, 2.0);
  EXPECT_GE(during.heap_total_mb, during.heap_used_mb);
  EXPECT_GE(during.heap_total_mb - before.heap_total_mb, 62.0);

  std::free(g_sink);
  g_sink = nullptr;
  const MemorySnapshot after = probe->Sample();
  // A block this large is mmapped and returned to the kernel on free.
  EXPECT_NEAR(after.heap_used_mb, before.heap_used_mb, 2.0);
  EXPECT_GE(after.heap_total_mb, after.heap_used_mb);
}

TEST(MemoryProbe, RssAndPeakGrowWhen64MbIsTouched) {
  auto probe = NewProcMemoryProbe();
  constexpr size_t kBytes = 64u << 20;
  const MemorySnapshot before = probe->Sample();

  char* block = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(block, nullptr);
  std::memset(block, 0x3c, kBytes);  // touch every page so it is resident
  g_sink = block;
  const MemorySnapshot during = probe->Sample();
  EXPECT_EQ(static_cast<volatile char*>(g_sink)[0], 0x3c);
  // Touched pages are resident (a generous lower bound: other pages may be reclaimed meanwhile).
  EXPECT_GT(during.rss_mb - before.rss_mb, 32.0);
  EXPECT_GE(during.peak_rss_mb, during.rss_mb - 1.0);

  std::free(g_sink);
  g_sink = nullptr;
  // The high-water mark does not go down.
  EXPECT_GE(probe->Sample().peak_rss_mb, during.rss_mb - 1.0);
}

TEST(MemoryProbe, CgroupFieldsAreConsistent) {
  MemorySnapshot s = NewProcMemoryProbe()->Sample();
  const bool v1_memory_mounted = access("/sys/fs/cgroup/memory/memory.usage_in_bytes", R_OK) == 0;
  if (v1_memory_mounted && ProcSelfCgroupHasV1Memory()) {
    // This machine: a v1 memory controller at /sys/fs/cgroup/memory.
    EXPECT_EQ(s.cgroup_version, "v1");
    ASSERT_TRUE(s.cgroup_usage_mb.has_value());
    EXPECT_GT(*s.cgroup_usage_mb, 0);
  }
  if (s.cgroup_version.empty()) {
    EXPECT_FALSE(s.cgroup_usage_mb.has_value());
    EXPECT_FALSE(s.cgroup_limit_mb.has_value());
  } else {
    EXPECT_TRUE(s.cgroup_version == "v1" || s.cgroup_version == "v2") << s.cgroup_version;
    ASSERT_TRUE(s.cgroup_usage_mb.has_value());
    EXPECT_GT(*s.cgroup_usage_mb, 0);
    if (s.cgroup_limit_mb) EXPECT_GT(*s.cgroup_limit_mb, 0);
  }
}

// The cgroup layouts of other machines, given to the parser and the probe as text and a directory
// of files: each path runs here whatever this machine has (v1 memcg, v2, hybrid, none).
class CgroupLayouts : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("laneguard-cgroup-layout-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  // Makes `dir` (under the root) with `files` written in it; returns its full path.
  std::string MakeDir(const std::string& dir,
                      const std::vector<std::pair<std::string, std::string>>& files) {
    const std::filesystem::path path = root_ / dir;
    std::filesystem::create_directories(path);
    for (const auto& [name, text] : files) std::ofstream(path / name) << text;
    return path.string();
  }
  // One /proc/self/mountinfo line.
  static std::string Mount(const std::string& root, const std::string& point,
                           const std::string& fstype, const std::string& options) {
    return "36 25 0:31 " + root + " " + point + " rw,nosuid shared:15 - " + fstype + " " + fstype +
           " " + options + "\n";
  }
  std::filesystem::path root_;
};

TEST_F(CgroupLayouts, UnifiedV2WithTheMemoryController) {
  const std::string dir = MakeDir("cg2/system.slice/job.scope",
                                  {{"memory.current", "104857600\n"}, {"memory.max", "max\n"}});
  const internal::CgroupDirs dirs = internal::FindOwnCgroups(
      "0::/system.slice/job.scope\n", Mount("/", (root_ / "cg2").string(), "cgroup2", "rw"));
  EXPECT_EQ(dirs.v2, dir);
  EXPECT_EQ(dirs.v1_memory, "");
  const MemorySnapshot s = internal::NewProcMemoryProbe(dirs)->Sample();
  EXPECT_EQ(s.cgroup_version, "v2");
  ASSERT_TRUE(s.cgroup_usage_mb.has_value());
  EXPECT_DOUBLE_EQ(*s.cgroup_usage_mb, 100.0);
  EXPECT_FALSE(s.cgroup_limit_mb.has_value());  // "max"
}

TEST_F(CgroupLayouts, V1MemoryHierarchyBesideAnEmptyUnifiedOne) {
  const std::string dir =
      MakeDir("memory/process_api/abc",
              {{"memory.usage_in_bytes", "52428800\n"}, {"memory.limit_in_bytes", "1073741824\n"}});
  MakeDir("unified", {});  // a v2 mount with no memory controller: no memory.current
  const internal::CgroupDirs dirs =
      internal::FindOwnCgroups("4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n",
                               Mount("/", (root_ / "memory").string(), "cgroup", "rw,memory") +
                                   Mount("/", (root_ / "unified").string(), "cgroup2", "rw"));
  EXPECT_EQ(dirs.v1_memory, dir);
  const MemorySnapshot s = internal::NewProcMemoryProbe(dirs)->Sample();
  EXPECT_EQ(s.cgroup_version, "v1");
  ASSERT_TRUE(s.cgroup_usage_mb.has_value() && s.cgroup_limit_mb.has_value());
  EXPECT_DOUBLE_EQ(*s.cgroup_usage_mb, 50.0);
  EXPECT_DOUBLE_EQ(*s.cgroup_limit_mb, 1024.0);
}

TEST_F(CgroupLayouts, V1NoLimitIsThePageCounterMaximum) {
  MakeDir("memory", {{"memory.usage_in_bytes", "1048576\n"},
                     {"memory.limit_in_bytes", "9223372036854771712\n"}});
  const internal::CgroupDirs dirs = internal::FindOwnCgroups(
      "4:memory:/\n", Mount("/", (root_ / "memory").string(), "cgroup", "rw,memory"));
  const MemorySnapshot s = internal::NewProcMemoryProbe(dirs)->Sample();
  EXPECT_EQ(s.cgroup_version, "v1");
  EXPECT_FALSE(s.cgroup_limit_mb.has_value());
}

// A container sees its own cgroup mounted as the hierarchy's root: the path /proc/self/cgroup
// names does not exist below the mountpoint, so the mountpoint is the cgroup.
TEST_F(CgroupLayouts, AContainersNamespacedViewIsTheMountpoint) {
  const std::string point =
      MakeDir("container-cg2", {{"memory.current", "2097152\n"}, {"memory.max", "268435456\n"}});
  const internal::CgroupDirs dirs = internal::FindOwnCgroups(
      "0::/kubepods/pod1/ctr\n", Mount("/kubepods/pod1/ctr", point, "cgroup2", "rw"));
  EXPECT_EQ(dirs.v2, point);
  const MemorySnapshot s = internal::NewProcMemoryProbe(dirs)->Sample();
  ASSERT_TRUE(s.cgroup_limit_mb.has_value());
  EXPECT_DOUBLE_EQ(*s.cgroup_limit_mb, 256.0);
}

TEST_F(CgroupLayouts, NoCgroupsMeansNoCgroupFields) {
  const internal::CgroupDirs dirs = internal::FindOwnCgroups("", "");
  EXPECT_EQ(dirs.v1_memory, "");
  EXPECT_EQ(dirs.v2, "");
  const MemorySnapshot s = internal::NewProcMemoryProbe(dirs)->Sample();
  EXPECT_EQ(s.cgroup_version, "");
  EXPECT_FALSE(s.cgroup_usage_mb.has_value());
  EXPECT_GT(s.rss_mb, 0);  // the process's own figures do not depend on cgroups
}

TEST(MemoryProbe, SampleIsSafeFromManyThreads) {
  auto probe = NewProcMemoryProbe();
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        MemorySnapshot s = probe->Sample();
        if (s.rss_mb > 0 && s.heap_total_mb >= s.heap_used_mb) ++ok[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(ok[t], 50) << "thread " << t;
}

TEST(Iso8601, Epoch) { EXPECT_EQ(FormatIso8601(0), "1970-01-01T00:00:00.000Z"); }

TEST(Iso8601, KnownValue) {
  EXPECT_EQ(FormatIso8601(1761166800000000000), "2025-10-22T21:00:00.000Z");
  EXPECT_EQ(FormatIso8601(1767225600000000000), "2026-01-01T00:00:00.000Z");
  // 2024-02-29T12:34:56.789Z (leap day).
  EXPECT_EQ(FormatIso8601(1709210096789000000), "2024-02-29T12:34:56.789Z");
}

// Against the C library's calendar over the whole int64 range, pre-1970 included.
TEST(Iso8601, AgreesWithGmtimeEverywhere) {
  std::mt19937_64 rng(42);
  auto reference = [](int64_t nanos) {
    int64_t ms = nanos / 1'000'000;
    if (nanos < 0 && nanos % 1'000'000 != 0) --ms;
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    int millis = static_cast<int>(ms % 1000);
    if (millis < 0) {
      millis += 1000;
      --secs;
    }
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
    return std::string(buf);
  };
  std::vector<int64_t> values = {std::numeric_limits<int64_t>::min(),
                                 std::numeric_limits<int64_t>::max(),
                                 -1,
                                 0,
                                 1,
                                 951'782'400'000'000'000 /* 2000-02-29 */};
  for (int i = 0; i < 20'000; ++i) values.push_back(static_cast<int64_t>(rng()));
  for (int64_t v : values) ASSERT_EQ(FormatIso8601(v), reference(v)) << v;
}

TEST(Iso8601, MillisecondsRoundDown) {
  EXPECT_EQ(FormatIso8601(1761166800000999999), "2025-10-22T21:00:00.000Z");
  EXPECT_EQ(FormatIso8601(1761166800001000000), "2025-10-22T21:00:00.001Z");
  EXPECT_EQ(FormatIso8601(1761166800999999999), "2025-10-22T21:00:00.999Z");
  EXPECT_EQ(FormatIso8601(1761166859999999999), "2025-10-22T21:00:59.999Z");
}

TEST(Iso8601, BeforeEpochFloors) {
  EXPECT_EQ(FormatIso8601(-1), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(FormatIso8601(-1'000'000), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(FormatIso8601(-1'000'001), "1969-12-31T23:59:59.998Z");
  EXPECT_EQ(FormatIso8601(-1'000'000'000), "1969-12-31T23:59:59.000Z");
}

TEST(Iso8601, ManualClockDrivesTimestamps) {
  ManualClock clock(1761166800000000000);
  EXPECT_EQ(FormatIso8601(clock.UnixNanos()), "2025-10-22T21:00:00.000Z");
  clock.AdvanceMs(1500);
  EXPECT_EQ(FormatIso8601(clock.UnixNanos()), "2025-10-22T21:00:01.500Z");
  EXPECT_EQ(clock.MonotonicNanos(), 1'500'000'000);
}

}  // namespace
}  // namespace laneguard
