"""Running jobs: the handler table, the context handed to handlers, the runner and recovery."""
