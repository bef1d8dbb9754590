//! Harness for the end-to-end tests: network namespaces, bridges, taps and QEMU machines.
