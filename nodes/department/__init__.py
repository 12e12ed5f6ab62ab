"""What a department runs: its node (gRPC service, budgets, sessions), the build of its labelled
tables from its register, its key epochs and state, and its registry of access requests and
disputes."""
