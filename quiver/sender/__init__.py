"""The sender: SQS intake → DKIM → routing → SMTP → events, with durable completion."""
