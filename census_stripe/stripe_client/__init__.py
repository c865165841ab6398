"""Stripe: the SDK client (client.py), its rate budget (rate_limit.py), and the SDK-free values
the planner works with (values.py)."""
