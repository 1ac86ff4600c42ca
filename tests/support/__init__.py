"""What the tests share: stand-ins named by the role they play, the daemon as a process, servers that misbehave on
request, certificates, checkpoints written by hand, paths."""
