"""Business logic. No transport, broker or database driver imports: only protocol, storage Protocols and ports."""
