"""``hostsetup sandbox``: a local host of real services on private sockets."""
