"""Tenants of the ingresses: their API keys (`keys.py`) and the `quiver keys` command.

What a tenant may send (its domains, its limits) is policy: quiver/policy/tenants.py.
"""
