"""Annex domain package: shared by every Lambda function of the control plane.

One module per concern: models (records and API shapes), config (settings models), policy (limits),
auth (who may do what), store (DynamoDB), ec2 (EC2), service (the operations the API exposes),
termination (the one path every stop takes).
"""
