// A tmpfile() that code under test writes to, read back whole, as lines, or as JSON lines.
#ifndef LANEGUARD_TESTS_SUPPORT_TMP_STREAM_H_
#define LANEGUARD_TESTS_SUPPORT_TMP_STREAM_H_

#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace laneguard::testing_support {

class TmpStream {
 public:
  TmpStream() : f_(std::tmpfile()) {}
  ~TmpStream() {
    if (f_) std::fclose(f_);
  }
  std::FILE* get() const { return f_; }

  std::string ReadAll() const {
    std::fflush(f_);
    std::rewind(f_);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f_)) > 0) text.append(buf, n);
    std::fseek(f_, 0, SEEK_END);
    return text;
  }

  std::vector<std::string> Lines() const {
    std::vector<std::string> lines;
    std::string text = ReadAll();
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      EXPECT_NE(end, std::string::npos) << "last line not terminated";
      if (end == std::string::npos) end = text.size();
      lines.push_back(text.substr(start, end - start));
      start = end + 1;
    }
    return lines;
  }

  // Every line parsed; a line that is not JSON fails the test.
  std::vector<nlohmann::json> Json() const {
    std::vector<nlohmann::json> out;
    for (const std::string& line : Lines()) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
      EXPECT_TRUE(j.is_object()) << line;
      out.push_back(std::move(j));
    }
    return out;
  }

 private:
  std::FILE* f_;
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_TMP_STREAM_H_
