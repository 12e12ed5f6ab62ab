"""What a client (civil affairs, education, insurance...) runs: queries to the nodes, the table
copies and output caches, statistics, catalogue requests and disputes, and the monthly screening."""
