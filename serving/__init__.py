"""Serving: clients for TensorFlow Serving (gRPC and REST), a CLI and server configuration.
The development server lives outside this package, in tfserving_dev/."""
