"""The SMTP wire client: PROXY header, STARTTLS with name checks, per-recipient replies."""
