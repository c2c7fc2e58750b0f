"""Business logic. No transport, broker or driver imports: only protocol, storage Protocols and ports."""
