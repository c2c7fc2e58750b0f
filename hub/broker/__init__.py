"""Fan-out between hub nodes. The broker calls the node; the node emits to local rooms only."""
