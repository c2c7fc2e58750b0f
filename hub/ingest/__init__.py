"""Ingest edges: events from the rest of the platform (Stripe webhooks, Kafka), handed to the domains."""
