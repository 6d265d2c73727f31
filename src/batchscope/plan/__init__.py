"""The planner: hardware profile + noise scale -> one recommendation (batch, lr, schedule, evidence)."""
