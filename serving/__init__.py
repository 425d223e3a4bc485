"""Serving: clients for TensorFlow Serving (gRPC and REST), a CLI, server configuration, and a
small stand-in server for tests and local development (`serving.test_server`)."""
