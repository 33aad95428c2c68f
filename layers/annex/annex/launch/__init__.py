"""Launch: from a requested annex to running, recorded instances (launcher), and what they boot (userdata)."""
