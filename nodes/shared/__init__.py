"""What departments and clients both use: configuration, certificates and TLS, the audit log, the
SQLite store, output caches and progress bars."""
