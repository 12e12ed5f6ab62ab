"""kinlink's cryptographic core: identifiers, OPRF ciphersuites, labelled tables, matching.

Pure functions and small classes over bytes and numpy arrays; no sockets and no config files.
"""
