# Built by host_tools/toolchain/setup.sh, which passes the frozen manifest and the options.
