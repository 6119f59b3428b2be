"""Federated analytics: statistics each site computes on its own rows and the control plane
combines, equal to the pooled computation (``docs/analytics.md``)."""
