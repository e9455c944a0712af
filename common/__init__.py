"""Code shared by every role: wire messages, framing, configuration, zmq set-up."""
