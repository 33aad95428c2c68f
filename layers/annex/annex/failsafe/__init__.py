"""The fail-safe: heartbeats, lease-check with the orphan sweep, idle-reap, the reaping rules, the sweep
plumbing, and termination (the one path every stop takes)."""
