// Entry point of the `laneguard` command (apps/laneguard/main.cc is a thin main() around it).
#ifndef LANEGUARD_SRC_CLI_COMMANDS_H_
#define LANEGUARD_SRC_CLI_COMMANDS_H_

namespace laneguard::cli {

// Parses the command line and runs the subcommand; returns the process's exit status.
int Main(int argc, char** argv);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_COMMANDS_H_
