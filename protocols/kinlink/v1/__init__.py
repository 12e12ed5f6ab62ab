"""Version 1 of the kinlink wire contract: psi.proto and the code generated from it."""
