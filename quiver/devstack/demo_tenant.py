"""The tenant both local ingresses (HTTP and SMTP) serve: every demo From domain is a
subdomain of its verified domain, so the sample messages pass the tenant check on
either path. Its keys are created when the stack starts and written to the env file.
"""

from __future__ import annotations

DEMO_TENANT = "demo"
DEMO_TENANT_DOMAIN = "quiver-demo.test"
DEMO_KEY_VARIABLE = "QUIVER_DEMO_TENANT_KEY"
INGRESS_URL_VARIABLE = "QUIVER_INGRESS_URL"


def demo_tenant_toml() -> str:
    """The demo tenant's policy section."""
    return f'\n[tenants.{DEMO_TENANT}]\ndomains = ["{DEMO_TENANT_DOMAIN}"]\n'
