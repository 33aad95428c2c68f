"""annex-local: the whole control plane offline, built from template.yaml so it cannot drift."""
