"""AWS access other than the table: cached clients, and EC2."""
