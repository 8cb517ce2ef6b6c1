"""`quiver preflight`: is DNS ready for this policy to send? (PTR, SPF, DKIM, bounce MX)."""
