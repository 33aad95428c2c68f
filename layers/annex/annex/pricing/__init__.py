"""Instance prices: on-demand from the AWS Price List Query API, spot from EC2's spot price history, and
a dated snapshot shipped with the project. Every price says where it came from and when."""
