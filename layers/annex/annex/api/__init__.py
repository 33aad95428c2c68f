"""The request API: the operations it exposes (service), the limits they enforce (policy), and HTTP."""
