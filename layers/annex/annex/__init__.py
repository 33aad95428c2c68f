"""Annex domain package, shared by every Lambda function of the control plane. Subpackages mirror the
architecture: `core` (models, config, clock, errors, auth), `store` (the DynamoDB table), `aws` (clients,
EC2), `api` (the request API), `launch` (launcher, user data), `failsafe` (heartbeat, lease-check,
idle-reap, termination). Arrows run one way: core <- store, aws <- launch, failsafe <- api.
"""
