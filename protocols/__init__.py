"""The wire contract: .proto files, generated code, version negotiation and size limits."""
