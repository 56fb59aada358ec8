// `laneguard serve`: one budget shared over HTTP (docs/serve.md). The daemon's parts are in
// src/server/; this wires them to the flags, the signals and the runtime.
#ifndef LANEGUARD_SRC_CLI_SERVE_COMMAND_H_
#define LANEGUARD_SRC_CLI_SERVE_COMMAND_H_

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "cli/runtime.h"

namespace laneguard::cli {

struct ServeFlags {
  CommonFlags common;
  std::vector<std::string> listen;
  std::string token_file;
  std::string drain_timeout = "30s";
};

CLI::App* AddServeCommand(CLI::App& app, ServeFlags& flags);
// Serves until SIGTERM, SIGINT or SIGQUIT, then drains; the process's exit status.
int ServeCommand(ServeFlags flags);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_SERVE_COMMAND_H_
