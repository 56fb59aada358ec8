// laneguard: run programs as budgeted worker calls. See `laneguard --help`.
#include "commands.h"

int main(int argc, char** argv) { return laneguard::cli::Main(argc, argv); }
