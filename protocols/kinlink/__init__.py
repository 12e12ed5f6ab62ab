"""kinlink wire contracts, one sub-package per major version."""
