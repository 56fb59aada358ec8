// Runs the `laneguard` binary in a scratch directory, its stdout and stderr captured to files.
#ifndef LANEGUARD_TESTS_SUPPORT_CLI_FIXTURE_H_
#define LANEGUARD_TESTS_SUPPORT_CLI_FIXTURE_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace laneguard::testing_support {

namespace fs = std::filesystem;

inline std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class CliFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("laneguard-cli-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Starts the binary with stdout and stderr going to files in the test's directory, with
  // `extra_env` ("NAME=value") added to the environment.
  // `output_fd` >= 0: stdout and stderr both go there instead (a pipe, say).
  pid_t Start(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {},
              int output_fd = -1) {
    std::vector<std::string> all = {LANEGUARD_CLI_PATH};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (output_fd >= 0) {
      posix_spawn_file_actions_adddup2(&actions, output_fd, 1);
      posix_spawn_file_actions_adddup2(&actions, output_fd, 2);
    } else {
      posix_spawn_file_actions_addopen(&actions, 1, (dir_ / "stdout").c_str(),
                                       O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_addopen(&actions, 2, (dir_ / "stderr").c_str(),
                                       O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }
    pid_t pid = -1;
    std::vector<std::string> env_strings = extra_env;
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    std::vector<char*> envp;
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }
  // Sets signaled_: a status of 128+N from a signal that killed the binary is not one it chose.
  int Wait(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    signaled_ = WIFSIGNALED(status);
    out_ = Slurp(dir_ / "stdout");
    err_ = Slurp(dir_ / "stderr");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  int Cli(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) {
    return Wait(Start(args, extra_env));
  }

  std::string Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  std::string out_, err_;
  bool signaled_ = false;
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_CLI_FIXTURE_H_
