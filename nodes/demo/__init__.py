"""The demo federation: a synthetic city and node processes on loopback, for `psi demo`,
benchmarks and tests. Neither a department nor a client imports it."""
