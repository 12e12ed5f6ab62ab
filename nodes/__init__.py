"""Department nodes, the civil-affairs client and the ``psi`` command line."""
