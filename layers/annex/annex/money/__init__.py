"""Money: what an annex has cost and will cost, budgets that stop it, and notices before it ends."""
