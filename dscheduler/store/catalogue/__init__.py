"""The catalogue built on the storage primitives: runs and their queries, status,
views of results, and verify (docs/design.md §3)."""
