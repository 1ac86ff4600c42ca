"""Engine daemon: websocket server, job queue, service files."""
